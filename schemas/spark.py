"""pyarrow contract -> Spark StructType (pyspark imported lazily: schemas stay importable without Spark)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def to_spark(schema: pa.Schema) -> Any:
    from pyspark.sql import types as T

    def convert(typ: pa.DataType) -> Any:
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            return T.StringType()
        if pa.types.is_int64(typ):
            return T.LongType()
        if pa.types.is_int32(typ):
            return T.IntegerType()
        if pa.types.is_float64(typ):
            return T.DoubleType()
        if pa.types.is_float32(typ):
            return T.FloatType()
        if pa.types.is_boolean(typ):
            return T.BooleanType()
        if pa.types.is_timestamp(typ):
            return T.TimestampType()
        if pa.types.is_date32(typ):
            return T.DateType()
        if pa.types.is_list(typ):
            return T.ArrayType(convert(typ.value_type), containsNull=False)
        raise TypeError(f"no Spark type for {typ}")

    return T.StructType([T.StructField(f.name, convert(f.type), f.nullable) for f in schema])
