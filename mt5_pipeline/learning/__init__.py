"""Learning: indicators, features, labels, training, evaluation, the model store and serving."""
