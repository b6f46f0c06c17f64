"""The paper's feature visualisations: recording module outputs during a translation, PCA, maps and grids."""
