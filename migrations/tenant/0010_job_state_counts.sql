-- Jobs by state for /metrics (shared migration 0004): counted as they change.
CREATE TRIGGER ai_jobs_count_states AFTER INSERT OR DELETE OR UPDATE OF state ON ai_jobs
    FOR EACH ROW EXECUTE FUNCTION public.count_job_states();

INSERT INTO public.job_states (schema_name, state, n)
SELECT current_schema(), state, count(*) FROM ai_jobs GROUP BY state
ON CONFLICT (schema_name, state) DO UPDATE SET n = EXCLUDED.n;
