"""The trainer: `zoo.train` and the pieces it is made of."""
