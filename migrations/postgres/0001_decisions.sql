-- The audit log, version 1: decisions and gaps.
-- Times are milliseconds since the Unix epoch (UTC). (source, seq, idx) is the key a batch's
-- entries arrive with: a batch sent again after a lost acknowledgement is not stored twice.
CREATE TABLE decisions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    idx           BIGINT  NOT NULL,
    first_seen_ms BIGINT  NOT NULL,
    last_seen_ms  BIGINT  NOT NULL,
    count         BIGINT  NOT NULL,
    node          TEXT    NOT NULL,
    direction     TEXT    NOT NULL CHECK (direction IN ('ingress', 'egress')),
    verdict       TEXT    NOT NULL CHECK (verdict IN ('allow', 'deny')),
    protocol      TEXT    NOT NULL,
    src_ip        TEXT    NOT NULL,
    src_port      BIGINT,
    dst_ip        TEXT    NOT NULL,
    dst_port      BIGINT,
    src_namespace TEXT,
    src_pod       TEXT,
    dst_namespace TEXT,
    dst_pod       TEXT,
    rule_id       TEXT    NOT NULL,
    tier          TEXT    NOT NULL,
    policy        TEXT,
    rule_index    BIGINT,
    rule_name     TEXT,
    isolated_by   TEXT    NOT NULL DEFAULT '',
    stored_at_ms  BIGINT  NOT NULL,
    UNIQUE (source, seq, idx)
);

CREATE TABLE gaps (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source       TEXT    NOT NULL,
    seq          BIGINT  NOT NULL,
    idx          BIGINT  NOT NULL,
    node         TEXT    NOT NULL,
    from_ms      BIGINT  NOT NULL,
    to_ms        BIGINT  NOT NULL,
    lost         BIGINT  NOT NULL,
    reason       TEXT    NOT NULL,
    stored_at_ms BIGINT  NOT NULL,
    UNIQUE (source, seq, idx)
);
