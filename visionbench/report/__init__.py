"""Reports: JSON records validated against report_schema/."""
