"""Sample quality: the classifier, feature distances, Inception features, the reference, evaluate and the training curve."""
