"""Small pure network definitions (parameters are plain pytrees)."""
