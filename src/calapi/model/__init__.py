"""The model: data contract, loaders, synthetic data, pipeline, trainer, card and predictors."""
