"""Entry point for gunicorn (`app:app`) and `flask run`: load `.env`, build the app."""
from dotenv import load_dotenv

from gpt_proxy import create_app

load_dotenv()
app = create_app()
