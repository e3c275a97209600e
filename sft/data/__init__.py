"""Data: file formats → canonical conversations → template text → token ids and loss masks → batches."""
