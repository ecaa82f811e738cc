"""Training as a Kubeflow Trainer TrainJob: the launcher side (a CPU task that creates,
watches and cleans up one TrainJob per architecture and round) and the node side (the
entry every node runs under torchrun). `spec.NodeTrainSpec` is what passes between them."""
