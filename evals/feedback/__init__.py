"""Feedback on answers: ratings and corrected answers for requests the gateway served, owned
by the key that made the request; the labelled data evaluation on live traffic and
retraining use."""
