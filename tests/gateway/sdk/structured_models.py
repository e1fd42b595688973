"""Pydantic models of increasing depth and prompts for them: what applications hand the
SDK's `chat.completions.parse` (tests/gateway/sdk/test_structured.py, bench/structured.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

# Strings and lists carry bounds, as a schema for a small model should: unbounded, this
# 135M model sometimes loops inside a string ("Sabre5_Sabre5_...", 1 answer in 8 at
# temperature 0.8) until max_tokens, and the answer is cut off.
Text = Annotated[str, Field(max_length=48)]


class Contact(BaseModel):
    name: Text
    email: Text
    age: int


class Item(BaseModel):
    name: Text
    quantity: int
    unit_price: float = Field(multiple_of=0.01)  # cents: else the digits may never end


class Order(BaseModel):
    order_id: int
    customer: Contact
    items: list[Item] = Field(max_length=3)
    status: Literal["open", "shipped", "cancelled"]


class Author(BaseModel):
    name: Text
    born: int | None


class Book(BaseModel):
    title: Text
    author: Author
    tags: list[Text] = Field(max_length=3)


class Shelf(BaseModel):
    label: Text
    books: list[Book] = Field(max_length=2)


class Library(BaseModel):
    name: Text
    city: Text
    shelves: list[Shelf] = Field(max_length=2)


MODELS: list[tuple[type[BaseModel], list[str]]] = [
    (
        Contact,
        [
            "Invent a contact card for a baker in Lyon.",
            "Give me the contact details of a fictional astronaut.",
            "Make up a contact for a retired chess teacher.",
            "Create a contact entry for a young violinist.",
            "Produce a contact for the manager of a small hotel.",
            "Write a contact for a marine biologist in Chile.",
            "A contact card for a librarian who loves maps.",
            "Contact details for a taxi driver in Nairobi.",
            "Describe a contact: a carpenter from Norway.",
            "A contact for a software tester named after a river.",
            "Fill in a contact for a beekeeper.",
            "Make a contact for a lighthouse keeper.",
            "Invent a contact for a street musician.",
            "Give a contact for a pharmacist in Osaka.",
            "Create a contact for a mountain guide.",
            "A contact for a newspaper cartoonist.",
            "Produce a contact card for a florist.",
            "Contact information for a ferry captain.",
            "Make up a contact for a museum guard.",
            "A contact for a pastry chef in Vienna.",
        ],
    ),
    (
        Order,
        [
            "Record an order of two notebooks and a pen for a student.",
            "An order from a cafe for coffee beans and paper cups.",
            "A shipped order of garden tools.",
            "A cancelled order for a winter coat.",
            "An open order of three books for a teacher.",
            "An order of paint and brushes for an artist.",
            "A shipped order of running shoes.",
            "An order of spare bicycle parts.",
            "An open order for office chairs.",
            "A cancelled order of concert tickets.",
            "An order of seeds for a farmer.",
            "An order of a lamp and light bulbs.",
            "A shipped order of kitchen knives.",
            "An open order for dog food.",
            "An order of two board games.",
            "A cancelled order of a guitar and strings.",
            "An order of printer ink for a school.",
            "A shipped order of tea and honey.",
            "An open order for hiking socks.",
            "An order of candles for a wedding.",
        ],
    ),
    (
        Library,
        [
            "Describe a small town library.",
            "A library inside a lighthouse.",
            "A children's library in a big city.",
            "A library of science fiction books.",
            "A university library with two shelves.",
            "A library on a boat.",
            "A library that only keeps poetry.",
            "A mountain village library.",
            "A library of cookbooks.",
            "A library in a train station.",
            "A school library.",
            "A library of history books.",
            "A library in a hospital.",
            "A library of travel guides.",
            "A library in an old castle.",
            "A library of detective novels.",
            "A library in a desert town.",
            "A library for musicians.",
            "A library in a space station.",
            "A library of fairy tales.",
        ],
    ),
]
