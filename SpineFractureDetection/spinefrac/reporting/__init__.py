"""Stage 4, reporting: the report (JSON/CSV) and the pictures. Imports assessment and the stages before it."""
