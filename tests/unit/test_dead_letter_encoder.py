"""The hand-written dead-letter encoder writes exactly fastavro's bytes, for any dead letter, however
hostile what it was built from (it encodes DeadLetter.fitted(), as the DLQ writer does)."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec

CODEC = DeadLetterCodec(dead_letter_codec())

texts = st.text(max_size=80)
optional_texts = st.none() | texts
wide_ints = st.none() | st.integers(min_value=-(2**70), max_value=2**70)
prices = st.none() | st.integers(min_value=-(10**13), max_value=10**13).map(lambda cents: Decimal(cents).scaleb(-2)) \
    | st.decimals(allow_nan=True, allow_infinity=True)
blobs = st.none() | st.binary(max_size=300)

dead_letters = st.builds(
    DeadLetter,
    error_reason=texts, error_type=texts, error_stage=st.sampled_from(["produce", "deserialize", "validate"]) | texts,
    original_topic=texts, failed_by=texts, order_id=optional_texts, product=optional_texts, price=prices,
    retry_count=st.integers(min_value=-5, max_value=2**40), replay_count=st.integers(min_value=-5, max_value=2**40),
    error_timestamp=texts, original_partition=wide_ints, original_offset=wide_ints, original_timestamp=wide_ints,
    original_key=blobs, original_value=blobs,
    original_headers=st.lists(st.tuples(texts, blobs), max_size=6),
)


def test_the_fast_path_is_in_use():
    assert CODEC.fast


@settings(max_examples=400, deadline=None)
@given(dead_letters)
def test_fast_encoding_equals_fastavro_and_decodes_back(letter):
    fitted = letter.fitted()
    fast = CODEC.encode(fitted)
    assert fast == CODEC.codec.encode(fitted.to_record())
    assert CODEC.codec.decode(fast) == CODEC.codec.decode(CODEC.codec.encode(fitted.to_record()))


def test_another_layout_in_the_schema_file_falls_back_to_fastavro(tmp_path):
    from orders_dlq.codec import DEFAULT_SCHEMA_DIR, AvroCodec

    raw = json.loads((DEFAULT_SCHEMA_DIR / "dead_letter.avsc").read_text())
    raw["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    (tmp_path / "dead_letter.avsc").write_text(json.dumps(raw))
    codec = DeadLetterCodec(AvroCodec("dead_letter.avsc", tmp_path))
    letter = DeadLetter(error_reason="r", error_type="t", error_stage="validate", original_topic="o",
                        failed_by="g").fitted()
    assert not codec.fast
    assert codec.codec.decode(codec.encode(letter))["extra"] is None
