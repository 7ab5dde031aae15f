"""Neural encoders: the contrastive timbre encoder and the TCAE melody autoencoder."""
