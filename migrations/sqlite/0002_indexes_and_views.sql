-- The audit log, version 2: indexes for the common questions and the documented views.

-- "What happened lately", retention by age.
CREATE INDEX decisions_last_seen ON decisions (last_seen_ms);
-- Either side's namespace and pod, over time.
CREATE INDEX decisions_dst_pod ON decisions (dst_namespace, dst_pod, last_seen_ms);
CREATE INDEX decisions_src_pod ON decisions (src_namespace, src_pod, last_seen_ms);
-- "Denied flows into namespace X in the last hour".
CREATE INDEX decisions_dst_verdict ON decisions (dst_namespace, verdict, last_seen_ms);
CREATE INDEX decisions_verdict ON decisions (verdict, last_seen_ms);
CREATE INDEX decisions_policy ON decisions (policy, last_seen_ms);
CREATE INDEX gaps_to ON gaps (to_ms);

-- Denials of the last 24 hours, newest first.
CREATE VIEW recent_denies AS
SELECT *
FROM decisions
WHERE verdict = 'deny'
  AND last_seen_ms >= (CAST(strftime('%s', 'now') AS INTEGER) - 86400) * 1000
ORDER BY last_seen_ms DESC;

-- Pairs of endpoints (a pod, or the address when no pod has it) by traffic, last 24 hours.
CREATE VIEW top_talkers AS
SELECT
    COALESCE(src_namespace || '/' || src_pod, src_ip) AS source,
    COALESCE(dst_namespace || '/' || dst_pod, dst_ip) AS destination,
    CAST(SUM(count) AS BIGINT) AS connections,
    CAST(SUM(CASE WHEN verdict = 'deny' THEN count ELSE 0 END) AS BIGINT) AS denied,
    MAX(last_seen_ms) AS last_seen_ms
FROM decisions
WHERE last_seen_ms >= (CAST(strftime('%s', 'now') AS INTEGER) - 86400) * 1000
GROUP BY 1, 2
ORDER BY connections DESC;

-- Traffic each policy (or each tier's default) decided, all time kept.
CREATE VIEW traffic_per_policy AS
SELECT
    tier,
    COALESCE(policy, '') AS policy,
    verdict,
    COUNT(*) AS decisions,
    CAST(SUM(count) AS BIGINT) AS connections,
    MIN(first_seen_ms) AS first_seen_ms,
    MAX(last_seen_ms) AS last_seen_ms
FROM decisions
GROUP BY tier, COALESCE(policy, ''), verdict
ORDER BY connections DESC;
