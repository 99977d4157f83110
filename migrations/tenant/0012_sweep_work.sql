-- What the engine's sweep may find due here, counted as it changes (shared migration
-- 0006), so the sweep skips this org while it has none.
CREATE TRIGGER automation_rules_count_timed AFTER INSERT OR DELETE OR UPDATE OF enabled, trigger_kind ON automation_rules
    FOR EACH ROW EXECUTE FUNCTION public.count_timed_rules();
CREATE TRIGGER webhook_deliveries_count_pending AFTER INSERT OR DELETE OR UPDATE OF state ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION public.count_pending_webhooks();

INSERT INTO public.sweep_work (schema_name, kind, n)
SELECT current_schema(), 'timed_rule', count(*) FROM automation_rules WHERE enabled AND trigger_kind IN ('schedule', 'stale')
UNION ALL
SELECT current_schema(), 'pending_webhook', count(*) FROM webhook_deliveries WHERE state = 'pending'
ON CONFLICT (schema_name, kind) DO UPDATE SET n = EXCLUDED.n;
