"""Using a trained model: terminal chat (server and web page come later)."""
