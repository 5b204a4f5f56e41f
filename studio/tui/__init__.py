"""The Textual client. The only part of the project that imports Textual."""
