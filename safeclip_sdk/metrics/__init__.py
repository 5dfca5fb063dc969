"""Numbers without models: retrieval rankings and recalls, moderation scores (ROC, thresholds, the
shift score), and the JSON reports they are written in."""
