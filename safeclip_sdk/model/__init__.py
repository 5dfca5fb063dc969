"""The model folder: loading base CLIPs from every source, saving and verifying folders, embedding
spaces, and the Hugging Face CLIPModel conversion."""
