"""Kong stage: classify HTTP flows as client leg / upstream leg / plain, and join the legs of one call."""
