-- The audit log, version 3: the per-namespace indexes lead with the namespace, then time.
--
-- Version 2 indexed (namespace, pod, time) on each side and (destination namespace, verdict,
-- time): with a pod or a verdict between the namespace and the time, every insert lands on a
-- random leaf page of each, and ingest paid for it (SQLite: 30,000 -> 67,000 decisions/s
-- once they are gone). (namespace, time) takes inserts at the end of each namespace's run,
-- and answers the same questions: a namespace's last hour is a range of it, and the pod or
-- the verdict is checked on those rows ("denied into namespace X in the last hour" over 10
-- million rows stays in milliseconds: docs/benchmarks.md).
DROP INDEX decisions_dst_pod;
DROP INDEX decisions_src_pod;
DROP INDEX decisions_dst_verdict;
CREATE INDEX decisions_dst_ns ON decisions (dst_namespace, last_seen_ms);
CREATE INDEX decisions_src_ns ON decisions (src_namespace, last_seen_ms);
