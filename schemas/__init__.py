"""Avro schemas (.avsc) of every event and message cx-pipeline reads or writes."""
from pathlib import Path

SCHEMA_DIR = Path(__file__).parent
