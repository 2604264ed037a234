-- The local values a change replaced (an update's), so the change view can show each field
-- before and after; '{}' where not known (rows written before this column).
ALTER TABLE change_log ADD COLUMN before_values TEXT NOT NULL DEFAULT '{}';
