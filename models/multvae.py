"""A variational autoencoder over users' item sets (Mult-VAE, Liang et al. 2018), exported as a two-tower model.

The model reads a user's whole item set as one multi-hot row ``x`` and predicts a multinomial distribution over
the catalogue from it:

- encoder: ``x / ||x||`` (input dropout while training) -> dense layers (``hidden``; tanh, or swish with layer
  norm) -> mean ``mu`` and log variance of a ``latent``-dimensional Gaussian;
- decoder: ``logits = h(z) @ W.T + b`` with ``W`` items x d and ``h`` the identity (default: d = latent) or
  tanh layers (``decoder_hidden``), softmax over the catalogue; nothing is ever items x items;
- loss: the multinomial negative log likelihood of the user's items plus ``beta`` times the KL divergence of the
  posterior from N(0, I) (``beta`` grown linearly from 0 over ``anneal_epochs``), plus ``l2`` on the weights.
  ``variational=False`` gives the denoising autoencoder (Mult-DAE): ``z = mu``, no KL term.
- optional refinements from RecVAE (Shenbin et al. 2020): residual encoder layers, a KL weight proportional to
  the user's number of items (``gamma``), the composite prior, alternating encoder and decoder passes; and
  ``members`` independently seeded networks whose logits are summed.

Training reads the multi-hot rows as (row, column) pairs: the first layer is a sum of item rows, so a batch costs
its number of ratings there, not batch x items.

Export (``scoring.contract``): recommending ranks items by their logit, and with ``z = mu`` (no sampling) the
logit is a dot product: the user embedding is ``[h(mu(x)), 1]``, computed from the contract's ``seen`` ids (a sum
of the first layer's item rows, not a dense multi-hot product), and the item embedding is ``[W_i, b_i]``; with
several members, their embeddings side by side. Unknown items get the zero vector (the contract's rule), padding
id 0 contributes nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from scoring.contract import ScoringModule, in_vocab, multi_hot_sparse


@dataclasses.dataclass(frozen=True)
class MultVAEParams:
    """Defaults: Mult-VAE's architecture (600 tanh, 200 latent, input dropout 0.5, beta 0.2) with l2 0.003, 40
    epochs and 3 members, chosen on a validation fold of the ml-100k split's train side (20% of each user's
    items held out); no RecVAE refinement beat them there. Rechecked on three folds holding out 10% of each item's
    train ratings (``benchmarks.tune_multvae``, folds 7, 8, 9): no change of l2, latent, hidden width, dropout,
    beta, learning rate, batch size, weight averaging (ema), 5 members, the denoising variant or RecVAE's
    refinements together beat them on both folds tried."""

    hidden: tuple[int, ...] = (600,)  # encoder layers before the latent heads
    latent: int = 200  # the latent dimension
    decoder_hidden: tuple[int, ...] = ()  # tanh layers between z and the item vectors (the original's 600)
    activation: str = "tanh"  # "tanh" or "swish"
    layer_norm: bool = False  # layer norm after each hidden layer
    variational: bool = True  # False: denoising autoencoder (no sampling, no KL term)
    dropout: float = 0.5  # input dropout while training
    beta: float = 0.2  # weight of the KL term once annealed
    anneal_epochs: int = 0  # beta grows linearly from 0 over this many epochs (0: beta from the start)
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 1e-3
    l2: float = 0.003  # on every weight matrix (not biases), added to the per-user mean loss
    # RecVAE's refinements (Shenbin et al. 2020), each off by default:
    residual: bool = False  # each hidden layer after the first adds the sum of all earlier layers' outputs
    gamma: float = 0.0  # > 0: a user's KL weight is gamma x their number of items (instead of beta)
    composite_prior: bool = False  # prior: N(0, I), the previous epoch's posterior and a wide normal, mixed
    encoder_passes: int = 0  # > 0: per epoch, this many encoder-only passes, then one decoder-only pass
    ema: float = 0.0  # > 0: export the running average of the weights (this decay per step)
    members: int = 3  # independently trained networks (seeds seed, seed + 1, ...) scored as their mean logit
    seed: int = 42

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> MultVAEParams:
        """From JSON-like values (``hidden`` may be a list); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Mult-VAE parameters: {unknown}; known: {sorted(known)}")
        fields = dict(values)
        for name in ("hidden", "decoder_hidden"):
            if name in fields:
                fields[name] = tuple(int(h) for h in fields[name])
        return dataclasses.replace(cls(), **fields)


def _activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    if name == "tanh":
        return tf.tanh
    if name == "swish":
        return tf.nn.silu
    raise ValueError(f"activation must be 'tanh' or 'swish', got {name!r}")


LAYER_NORM_EPSILON = 1e-3


def hidden_stack(
    first: tf.Tensor,
    kernels: Sequence[tf.Variable],
    biases: Sequence[tf.Variable],
    scales: Sequence[tf.Variable],
    offsets: Sequence[tf.Variable],
    activation: str,
    residual: bool = False,
) -> tf.Tensor:
    """The encoder's hidden layers after the first product: ``first`` is ``x_normalised @ kernel_0`` [B, h0];
    ``kernels`` are the later layers' (one fewer than ``biases``); layer norm when ``scales`` are given; with
    ``residual``, a layer's pre-activation also gets the sum of every earlier layer's output."""
    act = _activation(activation)
    h = first
    earlier: tf.Tensor | None = None
    for k, bias in enumerate(biases):
        if k > 0:
            h = tf.matmul(h, kernels[k - 1])
            if residual and earlier is not None:
                h = h + earlier
        h = act(h + bias)
        if scales:
            mean, variance = tf.nn.moments(h, axes=[1], keepdims=True)
            h = (h - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON) * scales[k] + offsets[k]
        earlier = h if earlier is None else earlier + h
    return h


def decoder_stack(z: tf.Tensor, kernels: Sequence[tf.Variable], biases: Sequence[tf.Variable]) -> tf.Tensor:
    """The decoder's tanh layers before the item vectors (none by default: z itself)."""
    for kernel, bias in zip(kernels, biases, strict=True):
        z = tf.tanh(tf.matmul(z, kernel) + bias)
    return z


class _Encoder(tf.Module):
    """Dense layers and the latent heads. The first layer's product is made by the caller (from training's
    (row, column) pairs, or from the export's padded ids), so both paths share everything after it."""

    def __init__(self, n_inputs: int, params: MultVAEParams, seed: int) -> None:
        super().__init__()
        self.params = params
        init = keras.initializers.GlorotUniform(seed=seed)
        widths = (n_inputs, *params.hidden)
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        self.first = tf.Variable(init(pairs[0]), name="kernel_0")
        self.kernels = [tf.Variable(init(shape), name=f"kernel_{k + 1}") for k, shape in enumerate(pairs[1:])]
        self.biases = [tf.Variable(tf.zeros([b]), name=f"bias_{k}") for k, b in enumerate(params.hidden)]
        self.scales = (
            [tf.Variable(tf.ones([b]), name=f"norm_scale_{k}") for k, b in enumerate(params.hidden)]
            if params.layer_norm
            else []
        )
        self.offsets = (
            [tf.Variable(tf.zeros([b]), name=f"norm_offset_{k}") for k, b in enumerate(params.hidden)]
            if params.layer_norm
            else []
        )
        last = widths[-1]
        self.mu_kernel = tf.Variable(init((last, params.latent)), name="mu_kernel")
        self.mu_bias = tf.Variable(tf.zeros([params.latent]), name="mu_bias")
        self.logvar_kernel = tf.Variable(init((last, params.latent)), name="logvar_kernel")
        self.logvar_bias = tf.Variable(tf.zeros([params.latent]), name="logvar_bias")

    def heads(self, first: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(mu, logvar) from the first layer's product [B, hidden[0]]."""
        h = hidden_stack(
            first,
            self.kernels,
            self.biases,
            self.scales,
            self.offsets,
            self.params.activation,
            self.params.residual,
        )
        return (
            tf.matmul(h, self.mu_kernel) + self.mu_bias,
            tf.matmul(h, self.logvar_kernel) + self.logvar_bias,
        )

    def weight_matrices(self) -> list[tf.Variable]:
        return [self.first, *self.kernels, self.mu_kernel, self.logvar_kernel]


SparseBatch = tuple[tf.Tensor, tf.Tensor, tf.Tensor]  # multi-hot rows: (row of each 1, its column, rows)
PRIOR_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)  # composite prior: N(0, I), previous posterior, wide normal
WIDE_LOGVAR = 10.0


def _log_normal(z: tf.Tensor, mu: tf.Tensor, logvar: tf.Tensor) -> tf.Tensor:
    return -0.5 * (logvar + np.log(2 * np.pi) + tf.square(z - mu) / tf.exp(logvar))


class MultVAENetwork(tf.Module):
    """The trainable model over items 0..n_items-1 (the catalogue without the padding column)."""

    def __init__(self, n_items: int, params: MultVAEParams) -> None:
        super().__init__()
        if not params.hidden:
            raise ValueError("Mult-VAE needs at least one hidden encoder layer")
        if params.residual and len(set(params.hidden)) > 1:
            raise ValueError(f"residual layers need equal widths, got hidden={params.hidden}")
        self.n_items, self.params = n_items, params
        self.encoder = _Encoder(n_items, params, params.seed)
        # the previous epoch's encoder, whose posterior is part of the composite prior (never trained)
        self.previous = _Encoder(n_items, params, params.seed) if params.composite_prior else None
        init = keras.initializers.GlorotUniform(seed=params.seed + 1)
        widths = (params.latent, *params.decoder_hidden)
        self.decoder_kernels = [
            tf.Variable(init((a, b)), name=f"decoder_kernel_{k}")
            for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        ]
        self.decoder_biases = [
            tf.Variable(tf.zeros([b]), name=f"decoder_bias_{k}") for k, b in enumerate(widths[1:])
        ]
        self.item_vectors = tf.Variable(init((n_items, widths[-1])), name="item_vectors")
        self.item_bias = tf.Variable(tf.zeros([n_items]), name="item_bias")
        self.noise = tf.random.Generator.from_seed(params.seed)
        self.remember_encoder()

    def encoder_variables(self) -> list[tf.Variable]:
        return [
            v for v in self.encoder.trainable_variables if self.params.variational or "logvar" not in v.name
        ]

    def decoder_variables(self) -> list[tf.Variable]:
        return [*self.decoder_kernels, *self.decoder_biases, self.item_vectors, self.item_bias]

    def remember_encoder(self) -> None:
        """The composite prior's previous posterior becomes the current encoder's."""
        if self.previous is not None:
            for old, new in zip(
                self.previous.trainable_variables, self.encoder.trainable_variables, strict=True
            ):
                old.assign(new)

    def first_product(
        self, encoder: _Encoder, batch: SparseBatch, keep: tf.Tensor | None = None
    ) -> tf.Tensor:
        """``normalise(x) @ first kernel`` [B, hidden[0]] as a sum of item rows (x is multi-hot: no dense
        product); ``keep`` (one bool per rating): input dropout, the kept entries scaled by 1 / (1 - rate)."""
        rows, cols, size = batch
        counts = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.float32), rows, size)
        weights = tf.gather(tf.math.rsqrt(tf.maximum(counts, 1.0)), rows)
        if keep is not None:
            weights = tf.where(keep, weights / (1.0 - self.params.dropout), tf.zeros_like(weights))
        return tf.math.unsorted_segment_sum(tf.gather(encoder.first, cols) * weights[:, None], rows, size)

    def forward(
        self, batch: SparseBatch, training: bool, dropout: bool = True
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """(logits, mu, logvar, z, keep) for a batch of multi-hot rows; input dropout (``keep``: one bool per
        rating, None without dropout) while ``training`` and ``dropout``, z sampled while ``training``
        (variational)."""
        keep = None
        if training and dropout and self.params.dropout > 0:
            keep = self.noise.uniform(tf.shape(batch[0])) >= self.params.dropout
        mu, logvar = self.encoder.heads(self.first_product(self.encoder, batch, keep))
        z = mu
        if training and self.params.variational:
            z = mu + tf.exp(0.5 * logvar) * self.noise.normal(tf.shape(mu))
        h = decoder_stack(z, self.decoder_kernels, self.decoder_biases)
        return tf.matmul(h, self.item_vectors, transpose_b=True) + self.item_bias, mu, logvar, z, keep

    def kl(self, batch: SparseBatch, mu: tf.Tensor, logvar: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """Per user: the KL divergence of the posterior from the prior (closed form for N(0, I); a one-sample
        estimate for the composite prior)."""
        if self.previous is None:
            return 0.5 * tf.reduce_sum(tf.exp(logvar) + tf.square(mu) - 1.0 - logvar, axis=1)
        old_mu, old_logvar = self.previous.heads(self.first_product(self.previous, batch))
        old_mu, old_logvar = tf.stop_gradient(old_mu), tf.stop_gradient(old_logvar)
        zeros = tf.zeros_like(z)
        components = tf.stack(
            [
                _log_normal(z, zeros, zeros) + np.log(PRIOR_WEIGHTS[0]),
                _log_normal(z, old_mu, old_logvar) + np.log(PRIOR_WEIGHTS[1]),
                _log_normal(z, zeros, zeros + WIDE_LOGVAR) + np.log(PRIOR_WEIGHTS[2]),
            ]
        )
        log_prior = tf.reduce_logsumexp(components, axis=0)
        return tf.reduce_sum(_log_normal(z, mu, logvar) - log_prior, axis=1)

    def loss(self, batch: SparseBatch, beta: tf.Tensor, dropout: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
        """(total loss, negative log likelihood), both per-user means."""
        rows, cols, size = batch
        logits, mu, logvar, z, _ = self.forward(batch, training=True, dropout=dropout)
        picked = tf.gather_nd(tf.nn.log_softmax(logits), tf.stack([rows, cols], axis=1))
        nll = -tf.reduce_sum(picked) / tf.cast(size, tf.float32)
        total = nll
        if self.params.variational:
            counts = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.float32), rows, size)
            weight = self.params.gamma * counts if self.params.gamma > 0 else beta
            total = total + tf.reduce_mean(weight * self.kl(batch, mu, logvar, z))
        if self.params.l2 > 0:
            weights = [*self.encoder.weight_matrices(), *self.decoder_kernels, self.item_vectors]
            total = total + self.params.l2 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in weights])
        return total, nll


class MultVAEScoring(ScoringModule):
    """The export: user embedding ``[mu(seen), 1]``, item embedding ``[W_i, b_i]`` (row 0, padding, zero)."""

    def __init__(self, network: MultVAENetwork) -> None:
        super().__init__()
        encoder, params = network.encoder, network.params
        self.n_items = network.n_items + 1  # with the padding index 0
        self.activation, self.residual = params.activation, params.residual

        def frozen(variables: Sequence[tf.Variable]) -> list[tf.Variable]:
            return [tf.Variable(v.numpy(), trainable=False) for v in variables]

        self.first = _padded(encoder.first.numpy())
        self.kernels, self.biases = frozen(encoder.kernels), frozen(encoder.biases)
        self.scales, self.offsets = frozen(encoder.scales), frozen(encoder.offsets)
        self.mu_kernel, self.mu_bias = frozen([encoder.mu_kernel, encoder.mu_bias])
        self.decoder_kernels = frozen(network.decoder_kernels)
        self.decoder_biases = frozen(network.decoder_biases)
        items = np.concatenate([network.item_vectors.numpy(), network.item_bias.numpy()[:, None]], axis=1)
        self.item_table = _padded(items)

    def user_embeddings(self, seen: tf.Tensor) -> tf.Tensor:
        """[B, latent + 1] from padded item ids [B, S]."""
        hot = multi_hot_sparse(seen, self.n_items)
        rows, items = hot.indices[:, 0], hot.indices[:, 1]
        n_users = tf.shape(seen, out_type=tf.int64)[0]
        summed = tf.math.unsorted_segment_sum(tf.gather(self.first, items), rows, n_users)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.float32), rows, n_users)
        first = (
            summed / tf.sqrt(tf.maximum(counts, 1.0))[:, None]
        )  # the L2-normalised multi-hot row's product
        h = hidden_stack(
            first, self.kernels, self.biases, self.scales, self.offsets, self.activation, self.residual
        )
        mu = tf.matmul(h, self.mu_kernel) + self.mu_bias
        out = decoder_stack(mu, self.decoder_kernels, self.decoder_biases)
        return tf.concat([out, tf.ones_like(out[:, :1])], axis=1)

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):  # type: ignore[no-untyped-def]
        return self.user_embeddings(seen)

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):  # type: ignore[no-untyped-def]
        return tf.gather(self.item_table, in_vocab(item_idx, self.n_items))


def _padded(table: np.ndarray) -> tf.Variable:
    """``table`` with a zero row 0 in front (padding / unknown), as a non-trainable variable."""
    table = np.asarray(table, np.float32)
    return tf.Variable(np.concatenate([np.zeros((1, table.shape[1]), np.float32), table]), trainable=False)


class MultVAEEnsemble(ScoringModule):
    """Several independently trained members scored as one: the embeddings side by side, so the dot product is
    the sum of the members' logits (their mean, up to a factor that does not change any ranking)."""

    def __init__(self, members: Sequence[MultVAEScoring]) -> None:
        super().__init__()
        self.members = list(members)
        self.n_items = self.members[0].n_items
        self.item_table = tf.Variable(
            np.concatenate([m.item_table.numpy() for m in self.members], axis=1), trainable=False
        )

    def user_embeddings(self, seen: tf.Tensor) -> tf.Tensor:
        parts = []
        for member in self.members:
            parts.append(member.user_embeddings(seen))
        return tf.concat(parts, axis=1)

    def _users(self, user_idx, history, seen, age_bucket_idx, region_idx):  # type: ignore[no-untyped-def]
        return self.user_embeddings(seen)

    def _items(self, item_idx, category_idx, price_bucket, title_tokens, age_days):  # type: ignore[no-untyped-def]
        return tf.gather(self.item_table, in_vocab(item_idx, self.n_items))


EpochCallback = Callable[[int, Callable[[], ScoringModule]], None]


class _Member:
    """One network with its optimisers, its batch order and (``ema`` > 0) the running average of its weights."""

    def __init__(self, matrix: sp.csr_matrix, users: np.ndarray, params: MultVAEParams) -> None:
        self.matrix, self.users, self.params = matrix, users, params
        self.network = network = MultVAENetwork(matrix.shape[1], params)
        self.rng = np.random.default_rng(params.seed)
        encoder, decoder = network.encoder_variables(), network.decoder_variables()
        self.tracked = encoder + decoder
        self.average = [tf.Variable(v.numpy(), trainable=False) for v in self.tracked] if params.ema else []
        spec = [tf.TensorSpec([None], tf.int64)] * 2 + [
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([], tf.float32),
        ]

        def stepper(variables: list[tf.Variable], dropout: bool) -> Callable[..., tf.Tensor]:
            optimizer = keras.optimizers.Adam(params.learning_rate)
            averaged = (
                [
                    (mean, value)
                    for mean, value in zip(self.average, self.tracked, strict=True)
                    if any(value is v for v in variables)
                ]
                if self.average
                else []
            )

            @tf.function(input_signature=spec)
            def step(rows: tf.Tensor, cols: tf.Tensor, size: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
                with tf.GradientTape() as tape:
                    total, nll = network.loss((rows, cols, size), beta, dropout=dropout)
                optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
                for mean, value in averaged:
                    mean.assign(params.ema * mean + (1.0 - params.ema) * value)
                return nll

            return step

        if params.encoder_passes > 0:  # alternating: the encoder with dropout, then the decoder on whole rows
            self.passes = [(stepper(encoder, True), params.encoder_passes), (stepper(decoder, False), 1)]
        else:
            self.passes = [(stepper(encoder + decoder, True), 1)]

    def epoch(self, beta: float) -> float:
        """One epoch; returns the last pass's mean negative log likelihood per user."""
        total = 0.0
        for step, repeats in self.passes:
            for _ in range(repeats):
                order = self.rng.permutation(self.users)
                total = 0.0
                for start in range(0, len(order), self.params.batch_size):
                    batch = order[start : start + self.params.batch_size]
                    part = self.matrix[batch].tocoo()
                    nll = step(
                        tf.constant(part.row, tf.int64),
                        tf.constant(part.col, tf.int64),
                        tf.constant(len(batch), tf.int64),
                        tf.constant(beta, tf.float32),
                    )
                    total += float(nll) * len(batch)
        self.network.remember_encoder()
        return total / max(len(self.users), 1)

    def export(self) -> MultVAEScoring:
        """The scoring module of the current weights, or of their running average."""
        if not self.average:
            return MultVAEScoring(self.network)
        current = [v.numpy() for v in self.tracked]
        for variable, mean in zip(self.tracked, self.average, strict=True):
            variable.assign(mean)
        module = MultVAEScoring(self.network)
        for variable, value in zip(self.tracked, current, strict=True):
            variable.assign(value)
        return module


def fit(
    interactions: sp.spmatrix,
    params: MultVAEParams | None = None,
    on_epochs: Sequence[int] = (),
    callback: EpochCallback | None = None,
) -> tuple[ScoringModule, dict[str, Any]]:
    """Trains on a binary CSR [n_users + 1, n_items + 1] (row and column 0 padding, as
    ``models.baselines.interaction_matrix`` builds it): ``members`` networks (seeds ``seed``, ``seed + 1``, ...)
    side by side. After each epoch in ``on_epochs`` (1-based), ``callback(epoch, export)`` can evaluate the
    model so far (``export()`` builds its scoring module).

    Returns the scoring module (:class:`MultVAEScoring`, or :class:`MultVAEEnsemble` of several members) and a
    summary (epochs, seconds, the last epoch's mean loss)."""
    params = params or MultVAEParams()
    started, cpu_started = time.perf_counter(), time.process_time()
    keras.utils.set_random_seed(params.seed)
    matrix = (sp.csr_matrix(interactions)[:, 1:] > 0).astype(np.float32).tocsr()
    users = np.flatnonzero(np.diff(matrix.indptr) > 0)  # users without items teach nothing
    members = [
        _Member(matrix, users, dataclasses.replace(params, seed=params.seed + k))
        for k in range(params.members)
    ]

    def export() -> ScoringModule:
        modules = [m.export() for m in members]
        return modules[0] if len(modules) == 1 else MultVAEEnsemble(modules)

    losses: list[float] = []
    wanted = set(on_epochs)
    for epoch in range(1, params.epochs + 1):
        anneal = min(1.0, epoch / params.anneal_epochs) if params.anneal_epochs > 0 else 1.0
        losses.append(float(np.mean([m.epoch(params.beta * anneal) for m in members])))
        if callback is not None and epoch in wanted:
            callback(epoch, export)
    return export(), {
        "epochs_run": params.epochs,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "final_nll": losses[-1] if losses else float("nan"),
        "params": dataclasses.asdict(params),
    }
