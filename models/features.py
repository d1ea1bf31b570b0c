"""Names and constants of the deep model's inputs, in one place (the towers, the data pipeline and tests use them).

The user and item input names are the scoring contract's (:mod:`scoring.contract`), so a batch built for training
feeds the exported model unchanged. Index 0 is padding / out of vocabulary everywhere (see schemas.features).
"""

from __future__ import annotations

# user tower inputs (same names and order as the exported ``encode_users`` signature)
USER_IDX = "user_idx"
HISTORY = "history"  # int32 [B, history_length], oldest first, left-padded with 0
SEEN = "seen"  # int32 [B, seen_length]: the user's known items (bag-of-items input; excluded at evaluation)
AGE_BUCKET_IDX = "age_bucket_idx"
REGION_IDX = "region_idx"
USER_INPUTS = (USER_IDX, HISTORY, SEEN, AGE_BUCKET_IDX, REGION_IDX)

# item tower inputs (same names and order as the exported ``encode_items`` signature)
ITEM_IDX = "item_idx"
CATEGORY_IDX = "category_idx"
PRICE_BUCKET = "price_bucket"
TITLE_TOKENS = (
    "title_tokens"  # int32 [N, title_tokens], hashed tokens in [1, title_hash_buckets], 0 = padding
)
AGE_DAYS = "age_days"  # float32 days since publication at the run date
ITEM_INPUTS = (ITEM_IDX, CATEGORY_IDX, PRICE_BUCKET, TITLE_TOKENS, AGE_DAYS)

# training labels: the positives of each example, padded with 0, and their weights (0 for padding)
TARGETS = "targets"
TARGET_WEIGHTS = "target_weights"

# user-tower sequence encoders, by the names users ask for
ENCODERS = ("gru", "lstm", "cnn", "attention", "mean")
# how training examples are built from each user's interactions:
#   next: every interaction is a target, the history is what came before it (sequential recommendation)
#   set:  each epoch, a random part of each user's items is held out as targets, the rest is the input
#         (the right objective when the evaluation hides a random subset, as the MovieLens benchmark split does)
OBJECTIVES = ("next", "set")

MODEL_NAME = "two_tower"
MODEL_KIND = "two_tower"
VERSION_PREFIX = "D"  # deep-model versions: D + short hash of parameters and data window

# metric the early stopping watches, written into the Keras logs each epoch
VAL_RECALL = "val_recall_at_k"
