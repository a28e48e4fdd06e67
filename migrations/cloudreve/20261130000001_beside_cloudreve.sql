-- resetmail's own tables in a Cloudreve site's database (RESETMAIL_ACCOUNT_SOURCE=cloudreve). They live
-- in the schema `resetmail`, the only one on the connection's search_path, and nothing here creates,
-- alters or references anything of Cloudreve's: `user_id` holds a Cloudreve `users.id` without a
-- foreign key, since one would add triggers to Cloudreve's table. See docs/CLOUDREVE.md.

-- Addresses match folding ASCII case only in the operator's queries (deliveries by address).
CREATE FUNCTION ascii_lower(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN translate(value, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz');

-- Only the SHA-256 of a token is stored; the token itself exists only in the email.
CREATE TABLE password_reset_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    job_id      uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX password_reset_tokens_live ON password_reset_tokens (user_id)
    WHERE used_at IS NULL AND revoked_at IS NULL;
CREATE INDEX password_reset_tokens_expires ON password_reset_tokens (expires_at);

-- One row per job: what happened to every reset request.
CREATE TABLE deliveries (
    job_id           uuid        PRIMARY KEY,
    correlation_id   uuid        NOT NULL,
    email            text        NOT NULL,
    user_id          bigint,
    outcome          text        NOT NULL DEFAULT 'pending'
                     CHECK (outcome IN ('pending', 'sent', 'unknown_account', 'banned', 'inactive',
                                        'expired', 'throttled', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    message_id       text,
    requested_at     timestamptz NOT NULL,
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_email ON deliveries (ascii_lower(email));
CREATE INDEX deliveries_correlation_id ON deliveries (correlation_id);
CREATE INDEX deliveries_user_sent ON deliveries (user_id, sent_at) WHERE outcome = 'sent';

-- Graphic captcha tickets, shared by every api replica; the answer is stored as a keyed hash.
CREATE TABLE captcha_tickets (
    ticket      text        PRIMARY KEY,
    answer_hash bytea       NOT NULL CHECK (octet_length(answer_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX captcha_tickets_expires ON captcha_tickets (expires_at);
