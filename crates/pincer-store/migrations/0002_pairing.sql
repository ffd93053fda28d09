-- DM pairing (dmPolicy: pairing): pending requests with their code, and approved senders.
-- Ids are stored exactly as the platform gives them (case-sensitive).
CREATE TABLE pairing_request (
    channel     TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    sender_id   TEXT    NOT NULL,
    sender_name TEXT,
    code        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (channel, account, sender_id)
);
CREATE UNIQUE INDEX pairing_request_code ON pairing_request (channel, code);

CREATE TABLE paired_sender (
    channel     TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    sender_id   TEXT    NOT NULL,
    sender_name TEXT,
    approved_at INTEGER NOT NULL,
    PRIMARY KEY (channel, account, sender_id)
);
