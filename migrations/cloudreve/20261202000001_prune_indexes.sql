-- The hourly prune deletes delivery rows by `requested_at` and tokens by `created_at`: without these
-- indexes it read both whole tables every hour (docs/SCALING.md). Built in the migration's
-- transaction, which holds writes to the tables while it runs: instant on most sites. On a large
-- `deliveries` table, build the index first, by hand, without blocking writes —
--   CREATE INDEX CONCURRENTLY deliveries_requested_at ON deliveries (requested_at);
-- and this migration finds it there. (CONCURRENTLY cannot be used here: it waits for every older
-- transaction, including another process's wait for the migrations' lock, and the two deadlock.)
CREATE INDEX IF NOT EXISTS deliveries_requested_at ON deliveries (requested_at);
CREATE INDEX IF NOT EXISTS password_reset_tokens_created_at ON password_reset_tokens (created_at);
