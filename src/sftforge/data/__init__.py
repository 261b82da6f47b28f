"""Data stages: read → detect format → Conversation → validate → render → mask → truncate → collate."""
