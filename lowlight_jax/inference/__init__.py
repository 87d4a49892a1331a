"""Inference: released-weights enhancement (`released`) and enhancing files, folders and videos (`batch_enhance`)."""
