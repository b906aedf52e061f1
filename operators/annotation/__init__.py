"""Automatic document labels (language, topic, quality) and the Label Studio round trip, in plain Python."""
