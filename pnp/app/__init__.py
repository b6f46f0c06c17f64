"""The entry points around the pipeline: the command line, the web UI, the form they share with the Cog
predictor, and the sample images."""
