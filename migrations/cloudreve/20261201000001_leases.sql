-- Jobs are claimed with a lease, and sent outside any transaction (docs/ARCHITECTURE.md, "A job's
-- life"): the worker that holds a job's lease is the only one that may send it until the lease
-- runs out; an email being sent holds a reservation that the account's cooldown and daily maximum
-- count, so that they stay exact while nothing is locked across the SMTP exchange.
ALTER TABLE deliveries
    ADD COLUMN lease_id    uuid,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN reserved_at timestamptz;
CREATE INDEX deliveries_user_reserved ON deliveries (user_id)
    WHERE outcome = 'pending' AND reserved_at IS NOT NULL;
