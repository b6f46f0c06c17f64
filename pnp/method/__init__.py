"""The method: DDIM schedule and steps, guidance, inversion, generation, feature injection, the row plan,
the source cache, and the engine run that puts them together for one call. No diffusers pipeline here."""
