-- Project settings the AI jobs use: the command a QA job runs, and the rules a review
-- job applies (free text the reviewer model reads).
ALTER TABLE projects ADD COLUMN test_command text;
ALTER TABLE projects ADD COLUMN review_rules text;
