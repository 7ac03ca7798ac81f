"""Entry point for gunicorn (`app:app`): load `.env` (or $DOTENV_FILE), build the app."""
import os

from dotenv import load_dotenv

from gpt_proxy import create_app

load_dotenv(os.environ.get("DOTENV_FILE", ".env"))
app = create_app()
