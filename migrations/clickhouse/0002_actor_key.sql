-- The user (actor) as a 128-bit SipHash, stored: unique-user counts hash
-- each value to 128 bits anyway (uniqExact over a String does), so counting
-- distinct actor_key gives the same answer as distinct actor without
-- hashing every string at query time.
ALTER TABLE events ADD COLUMN IF NOT EXISTS actor_key UInt128
    MATERIALIZED reinterpretAsUInt128(sipHash128(actor));
ALTER TABLE events MATERIALIZE COLUMN actor_key;
