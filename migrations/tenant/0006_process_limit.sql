-- The most processes a job of the template may run at once (applied by agents with
-- cgroups, like memory_mb and cpu_limit).
ALTER TABLE instance_templates ADD COLUMN max_processes integer;
