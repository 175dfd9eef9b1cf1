"""One module per family of GGUF block formats; each registers its types in quant.types."""
