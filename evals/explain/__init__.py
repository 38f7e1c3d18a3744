"""Attribution explanations: which parts of a prompt made a model give its answer (Captum)."""
