-- Graphic captcha tickets, shared by every api replica. The answer is stored hashed; any check
-- deletes the ticket, right or wrong.
CREATE TABLE captcha_tickets (
    ticket      text        PRIMARY KEY,
    answer_hash bytea       NOT NULL CHECK (octet_length(answer_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX captcha_tickets_expires ON captcha_tickets (expires_at);
