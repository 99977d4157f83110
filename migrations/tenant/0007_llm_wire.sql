-- How to speak to a provider where servers differ (streaming, the name of the
-- max-tokens field, tool_choice): WireSettings as JSON, `{}` for the defaults.
ALTER TABLE llm_providers ADD COLUMN wire jsonb NOT NULL DEFAULT '{}';
