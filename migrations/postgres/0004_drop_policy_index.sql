-- The audit log, version 4: drop the policy index.
--
-- No query can use it: the policy filter is `(policy = ? OR isolated_by LIKE ?)` (a denial
-- is found by the policy that decided it or by one that isolates its pod), and an OR with
-- a LIKE over JSON text is answered by scanning the rows the other conditions (time,
-- namespace) select; the traffic_per_policy view groups by tier first. Every insert still
-- paid for one more B-tree.
DROP INDEX decisions_policy;
