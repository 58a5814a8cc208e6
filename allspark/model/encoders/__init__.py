"""One file per modality encoder; the registry (``allspark.model.registry``) names them."""
