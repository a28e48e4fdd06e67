-- A delivery's outcome becomes a type of its own, `delivery_outcome`, which the worker maps to its
-- `Outcome` enum: a value outside the list cannot be stored, and a query comparing an outcome with a
-- misspelt one fails when it is prepared instead of matching nothing.
--
-- Rewrites `deliveries` (and its indexes) while holding it locked: seconds per million rows. Stop
-- the workers of the previous version before starting this one: their statements send outcomes as
-- text, which this column no longer takes, so their claims fail (and their jobs go back to the
-- queue) until they stop.
CREATE TYPE delivery_outcome AS ENUM
    ('pending', 'sent', 'unknown_account', 'banned', 'inactive', 'expired', 'throttled', 'failed');

-- The partial indexes name outcomes as text: rebuilt after the change.
DROP INDEX deliveries_user_sent;
DROP INDEX deliveries_user_reserved;
ALTER TABLE deliveries
    DROP CONSTRAINT deliveries_outcome_check,
    ALTER COLUMN outcome DROP DEFAULT,
    ALTER COLUMN outcome TYPE delivery_outcome USING outcome::delivery_outcome,
    ALTER COLUMN outcome SET DEFAULT 'pending';
CREATE INDEX deliveries_user_sent ON deliveries (user_id, sent_at) WHERE outcome = 'sent';
CREATE INDEX deliveries_user_reserved ON deliveries (user_id)
    WHERE outcome = 'pending' AND reserved_at IS NOT NULL;
