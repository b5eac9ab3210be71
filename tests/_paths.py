"""The real QA slices the tests read: tests/data, shipped with the project (see its SOURCES.md)."""
import pathlib

DATA = pathlib.Path(__file__).resolve().parent / "data"
HOTPOTQA = DATA / "hotpotqa_dev_100.jsonl"
WIKI = DATA / "2wikimultihopqa_dev_100.jsonl"
MUSIQUE = DATA / "musique_dev_100.jsonl"
SLICES = {"hotpotqa": HOTPOTQA, "2wiki": WIKI, "musique": MUSIQUE}
