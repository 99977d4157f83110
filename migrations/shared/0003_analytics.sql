-- The outbox's rows name their org in a column of its own, so the usage report reads
-- one org's calls by an index (PostgreSQL answers it when ClickHouse is not set).
ALTER TABLE analytics_outbox ADD COLUMN org_id uuid;
UPDATE analytics_outbox SET org_id = (payload->>'org_id')::uuid WHERE payload ? 'org_id';
CREATE INDEX analytics_outbox_org ON analytics_outbox (org_id, kind, created_at);
-- Shipped rows are deleted after the retention period, oldest first.
CREATE INDEX analytics_outbox_shipped ON analytics_outbox (shipped_at) WHERE shipped_at IS NOT NULL;
