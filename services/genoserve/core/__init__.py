"""Settings, the error hierarchy and metric definitions shared by every layer."""
