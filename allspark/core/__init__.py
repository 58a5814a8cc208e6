"""What every kind of data shares: run config, settings blocks, step results, atomic writes, model bundle, publishing."""
