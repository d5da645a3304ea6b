"""A user's own project, as tunetrack sees it: a network, a dataset and a metric."""
