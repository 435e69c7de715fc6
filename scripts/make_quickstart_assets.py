#!/usr/bin/env python3
"""Regenerates the quickstart's data and base-model skeleton, deterministically.

Writes:
  data/pretrain/{train,val}.jsonl         general simple English (stories, facts, dialogues, ...)
  data/quickstart/{train,val}.jsonl       "garden care notes" in one fixed house style
  data/quickstart/README.md
  configs/models/quickstart-base/         config.json, tokenizer.json, tokenizer_config.json,
                                          README.md (architecture + tokenizer; no weights)

All text comes from the templates and word lists in this file, drawn with random.Random(SEED),
so every run produces byte-identical files. Text generation uses only the standard library; the
byte-level BPE tokenizer is trained with the `tokenizers` package, and the result is checked
with `transformers` (skip that with --no-verify).

  python3 scripts/make_quickstart_assets.py [--root DIR] [--no-verify]
"""

import argparse
import json
import os
import random
import sys

SEED = 20241127
VOCAB_SIZE = 1024
EOS = "<|endoftext|>"
MAX_LEN = 512

PRETRAIN_TRAIN_BYTES = 1_500_000
PRETRAIN_VAL_BYTES = 60_000
GARDEN_TRAIN_DOCS = 1200
GARDEN_VAL_DOCS = 150
# Validation notes for plants that also appear in training; the rest are held-out plants.
GARDEN_VAL_SEEN_DOCS = 54

RECOMMENDED_PROMPT = "Plant: Tomato\nLight:"


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def an(phrase):
    """Prefixes 'a' or 'an'. The word lists avoid words where spelling misleads (hour, unit)."""
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def cap(text):
    return text[:1].upper() + text[1:]


def join_list(items):
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
COLORS = ["red", "blue", "green", "yellow", "orange", "purple", "brown", "black", "white",
          "grey", "pink", "golden", "silver"]


class Who:
    """A story character: how to name it and which pronouns refer to it."""

    PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}

    def __init__(self, name, desc, gender, animal=None):
        self.name, self.desc, self.gender, self.animal = name, desc, gender, animal

    def ctx(self, suffix=""):
        he, him, his = self.PRONOUNS[self.gender]
        return {"name" + suffix: self.name, "desc" + suffix: self.desc,
                "he" + suffix: he, "him" + suffix: him, "his" + suffix: his,
                "He" + suffix: cap(he), "His" + suffix: cap(his)}


def fill(rng, options, ctx):
    """Formats one randomly chosen template with the context."""
    return rng.choice(options).format(**ctx)


# ----------------------------------------------------------------------------------------------
# General corpus: word lists
# ----------------------------------------------------------------------------------------------

GIRL_NAMES = ["Anna", "Mia", "Lucy", "Emma", "Rosa", "Nina", "Clara", "Ella", "Maya", "Sofia",
              "Hannah", "Grace", "Lily", "Zoe", "Ava", "Ruby", "Alice", "Julia", "Nora", "Eva",
              "Tess", "Amara", "Leah", "Freya", "Ines", "Priya", "Kira", "Molly", "Jane", "Beth"]
BOY_NAMES = ["Tom", "Sam", "Ben", "Leo", "Jack", "Max", "Noah", "Oscar", "Finn", "Hugo",
             "Luca", "Omar", "Ravi", "Theo", "Adam", "Jonah", "Felix", "Owen", "Milo", "Eli",
             "Arlo", "Kofi", "Tariq", "Pablo", "Ivan", "Dan", "Peter", "Paul", "Mark", "Joe"]
PET_NAMES = ["Pip", "Rusty", "Bella", "Coco", "Biscuit", "Luna", "Ziggy", "Tilly", "Bo",
             "Patch", "Socks", "Bruno", "Dot", "Fudge", "Scout", "Rolo", "Misty", "Ginger",
             "Toffee", "Button", "Shadow", "Pebble", "Snowy", "Fluff"]

PERSON_DESC = {
    "f": ["little girl", "young woman", "old woman", "girl", "baker", "farmer", "teacher",
          "painter", "nurse", "sailor", "shopkeeper", "clever girl", "kind old lady", "student",
          "doctor", "writer"],
    "m": ["little boy", "young man", "old man", "boy", "baker", "farmer", "teacher", "painter",
          "fisherman", "sailor", "shopkeeper", "clever boy", "kind old man", "student",
          "carpenter", "postman"],
}
# (description, home phrase, how it moves)
ANIMALS = [
    ("small brown dog", "in a kennel behind a farmhouse", "ran"),
    ("curious cat", "in a warm house at the end of the street", "crept"),
    ("clever fox", "in a den at the edge of the woods", "trotted"),
    ("little rabbit", "in a burrow under a hedge", "hopped"),
    ("young bear", "in a cave high in the mountains", "lumbered"),
    ("wise old owl", "in a hollow tree in the forest", "flew"),
    ("busy squirrel", "in a nest at the top of an oak tree", "scampered"),
    ("tiny grey mouse", "in a hole in the kitchen wall", "scurried"),
    ("white duck", "beside a pond in the park", "waddled"),
    ("young goat", "on a farm in the hills", "skipped"),
    ("brown horse", "in a stable near the river", "galloped"),
    ("green frog", "in a pond full of reeds", "hopped"),
    ("sleepy hedgehog", "under a pile of leaves by the wall", "shuffled"),
    ("slow old turtle", "by a lake in the middle of the forest", "crawled"),
    ("little robin", "in a nest on a garden wall", "flew"),
    ("fluffy lamb", "in a green field by the sea", "bounced"),
    ("proud rooster", "in a yard on a busy farm", "strutted"),
    ("playful otter", "on the bank of a fast river", "slid"),
]
PLACES = ["in a small village near the sea", "on a farm at the foot of the hills",
          "in a busy city full of tall buildings", "at the edge of a big forest",
          "in a little house by the river", "on an island far away",
          "in a town with a red bridge", "in a cottage on a windy hill",
          "near a quiet lake", "in a flat above a bakery", "in a valley between two mountains",
          "in a fishing town on the coast", "in a yellow house on a long street",
          "on a boat that sailed up and down the canal", "in an old house full of books",
          "in a village where it snowed every winter", "at the top of a steep hill",
          "in a house with a blue door"]
TOWNS = ["the next village", "the big city", "a town by the sea", "the mountains",
         "a village below the old castle", "the market town", "a house by the lake",
         "the harbour town", "the capital", "a farm across the valley"]
RELATIVES = ["grandmother", "grandfather", "aunt", "uncle", "cousin", "old friend",
             "big sister", "big brother"]
TRAVEL = ["by train", "on foot", "on a bicycle", "in a small boat", "by bus", "in an old car",
          "on a horse", "in a cart pulled by a donkey"]
SIGHTS = ["fields of golden wheat", "a windmill turning slowly", "cows standing in the mud",
          "a castle on a hill", "a river full of boats", "children flying kites",
          "a long row of coloured houses", "a forest of tall dark trees", "a herd of sheep",
          "a lighthouse by the sea", "an old stone bridge", "a fair with a big wheel",
          "a lake as smooth as glass", "a train crossing a valley"]
ITEMS = ["red ball", "blue hat", "favourite book", "old brass key", "kite", "woolly scarf",
         "toy boat", "shiny coin", "little bell", "map", "green umbrella", "silver ring",
         "pair of glasses", "wooden spoon", "paintbrush", "lunch box", "left boot", "teddy bear"]
HIDING_PLACES = ["under the bed", "behind the sofa", "in the kitchen drawer", "by the gate",
                 "in the shed", "under a pile of leaves", "on top of the wardrobe",
                 "inside a flower pot", "in the dog's basket", "under the stairs",
                 "in the pocket of an old coat", "behind the bookshelf", "in the bread bin",
                 "at the bottom of the toy box"]
SKILLS = [("swim", "swimming"), ("ride a bike", "riding"), ("bake bread", "baking"),
          ("play the piano", "playing"), ("read", "reading"), ("whistle", "whistling"),
          ("climb trees", "climbing"), ("fly a kite", "flying the kite"),
          ("draw horses", "drawing"), ("catch fish", "fishing"), ("skate", "skating"),
          ("juggle", "juggling"), ("sing", "singing"), ("knit a scarf", "knitting"),
          ("tie knots", "tying knots"), ("row a boat", "rowing")]
TEACHERS = ["an old neighbour", "a kind teacher", "a patient friend", "a grandfather",
            "a big sister", "a coach at the club", "a grandmother", "a stranger in the park"]
FEELINGS_GOOD = ["happy", "proud", "glad", "excited", "pleased", "delighted", "cheerful"]
FEELINGS_BAD = ["sad", "worried", "upset", "cross", "nervous", "tired", "lonely"]
FEELINGS_LOSS = ["sad", "worried", "upset", "cross"]
FEELINGS_MEET = ["happy", "glad", "pleased", "delighted"]
SNACKS = ["bread", "cheese", "an apple", "some nuts", "a pear", "a sandwich", "a biscuit",
          "some plums", "an orange"]
FOODS = ["bread", "cheese", "apples", "soup", "rice", "eggs", "honey", "pancakes", "pears",
         "fish", "milk", "jam", "nuts", "carrot cake", "noodles", "plums", "butter", "oranges"]
GIFTS = ["cake", "card", "song", "painting", "wooden box", "scarf", "jar of jam",
         "paper crown", "poem", "little boat made of wood"]
WEATHER_EVENTS = [
    ("a big storm", "The wind howled and rain beat against the windows.",
     "branches lay across the road"),
    ("a heavy snowfall", "Snow fell all night and covered the roofs and roads.",
     "the paths were buried in snow"),
    ("a very hot day", "The sun burned in a clear sky and the air was still.",
     "the flowers in the square drooped"),
    ("a thick fog", "A grey fog rolled in from the sea and hid the houses.",
     "nobody could see the end of the street"),
    ("a great flood", "The river rose higher and higher after a week of rain.",
     "water covered the lower fields"),
    ("a strong wind", "The wind blew so hard that hats flew off heads.",
     "fences had fallen over"),
]
WISHES = [("to be tall", "tall", "small enough to slip through the gap in the fence"),
          ("to fly", "a bird", "strong enough to pull the cart"),
          ("to be fast", "fast", "patient enough to wait for the right moment"),
          ("to sing", "a songbird", "quiet enough to hear the danger coming"),
          ("to be big", "big", "light enough to walk across the thin ice"),
          ("to have bright feathers", "colourful", "plain enough to hide in the grass")]


# ----------------------------------------------------------------------------------------------
# General corpus: document generators
# ----------------------------------------------------------------------------------------------

def make_person(rng, exclude=()):
    gender = rng.choice("fm")
    pool = GIRL_NAMES if gender == "f" else BOY_NAMES
    name = rng.choice([n for n in pool if n not in exclude])
    return Who(name, rng.choice(PERSON_DESC[gender]), gender)


def make_animal(rng, exclude=()):
    desc, home, move = rng.choice(ANIMALS)
    name = rng.choice([n for n in PET_NAMES if n not in exclude])
    return Who(name, desc, rng.choice("fm"), animal=(home, move))


def make_character(rng, exclude=()):
    return make_animal(rng, exclude) if rng.random() < 0.4 else make_person(rng, exclude)


def opening(rng, who):
    c = who.ctx()
    if who.animal:
        c["home"] = who.animal[0]
        intro = ["Once there was {a_desc} called {name} who lived {home}.",
                 "Long ago, {a_desc} named {name} lived {home}.",
                 "{name} was {a_desc}. {He} lived {home}.",
                 "There was once {a_desc}. Everyone called {him} {name}, and {he} lived {home}."]
    else:
        c["home"] = rng.choice(PLACES)
        intro = ["Once upon a time there was {a_desc} called {name} who lived {home}.",
                 "{name} was {a_desc} who lived {home}.",
                 "Long ago, {home}, there lived {a_desc} named {name}.",
                 "There was once {a_desc} named {name}. {He} lived {home}."]
    c["a_desc"] = an(who.desc)
    return fill(rng, intro, c)


def time_phrase(rng):
    return rng.choice(["One morning", "One day", "One sunny afternoon", "Early one morning",
                       "One cold evening", "Last summer", "On a rainy " + rng.choice(WEEKDAYS),
                       "One day in " + rng.choice(MONTHS), "One spring morning",
                       "One windy night"])


def story_lost_item(rng):
    who = make_character(rng)
    friend = make_character(rng, exclude=(who.name,))
    c = who.ctx()
    c.update(friend.ctx("2"))
    c.update(item=rng.choice(ITEMS), when=time_phrase(rng), bad=rng.choice(FEELINGS_LOSS),
             good=rng.choice(FEELINGS_GOOD), a_desc2=an(friend.desc))
    places = rng.sample(HIDING_PLACES, 4)
    c.update(p1=places[0], p2=places[1], p3=places[2], found=places[3])
    s = [opening(rng, who)]
    s.append(fill(rng, ["{When}, {name} could not find {his} {item}.",
                        "{When}, {name} lost {his} {item}.",
                        "{When}, {name} looked for {his} {item}, but it was gone."],
                  dict(c, When=c["when"])))
    s.append(fill(rng, ["{He} felt very {bad}.", "This made {him} {bad}.",
                        "{name} was {bad}, because the {item} was very special to {him}."], c))
    s.append(fill(rng, ["{He} looked {p1}, {p2} and {p3}, but it was not there.",
                        "First {he} searched {p1}. Then {he} looked {p2}. It was not {p3} either.",
                        "{He} checked {p1} and {p2}. {He} even looked {p3}."], c))
    if rng.random() < 0.6:
        s.append(fill(rng, ['"What are you looking for?" asked {name2}, {a_desc2}.',
                            'Just then {name2}, {a_desc2}, came by. "Can I help?" {he2} asked.',
                            '{name2} saw that {name} was {bad}. "What is wrong?" {he2} asked.'],
                      c))
        s.append(fill(rng, ['"I lost my {item}," said {name}.',
                            '"My {item} is missing," {name} said.',
                            '"I cannot find my {item} anywhere," {name} replied.'], c))
        s.append(fill(rng, ["Together they looked {found}, and there it was!",
                            "{name2} had an idea. {He2} looked {found}, and there was the {item}.",
                            "They searched together until {name2} found it {found}."], c))
    else:
        s.append(fill(rng, ["At last {he} found it {found}.",
                            "In the end the {item} was {found} all along.",
                            "Then {he} remembered. The {item} was {found}!"], c))
    s.append(fill(rng, ["{name} was {good} again.", "{He} smiled and held it tight.",
                        "From then on, {name} always put the {item} in the same place.",
                        "That night {name} went to bed {good}."], c))
    return " ".join(s)


def story_journey(rng):
    who = make_person(rng)
    c = who.ctx()
    sights = rng.sample(SIGHTS, 3)
    c.update(rel=rng.choice(RELATIVES), town=rng.choice(TOWNS), travel=rng.choice(TRAVEL),
             when=time_phrase(rng), s1=sights[0], s2=sights[1], s3=sights[2],
             food=rng.choice(FOODS), food2=rng.choice(FOODS), good=rng.choice(FEELINGS_MEET),
             hours=rng.choice(NUMBER_WORDS[2:7]), snack=rng.choice(SNACKS))
    s = [opening(rng, who)]
    s.append(fill(rng, ["{when}, {name} went to visit {his} {rel} in {town}.",
                        "{when}, {name} set off to see {his} {rel}, who lived in {town}.",
                        "{name}'s {rel} lived in {town}. {when}, {name} decided to visit."], c))
    s.append(fill(rng, ["{He} travelled {travel}, and the trip took {hours} hours.",
                        "{He} went {travel}. It was a long way.",
                        "The journey {travel} took most of the day."], c))
    s.append(fill(rng, ["On the way {he} saw {s1}, {s2} and {s3}.",
                        "Along the way there was so much to see: {s1}, {s2}, and even {s3}.",
                        "First {he} passed {s1}. Later {he} saw {s2}."], c))
    if rng.random() < 0.5:
        s.append(fill(rng, ["Then it began to rain, and {name} got very wet.",
                            "Halfway there, {he} took a wrong turn and had to ask for the way.",
                            "After a while {he} felt tired and hungry, so {he} ate {snack}."],
                      c))
    s.append(fill(rng, ["When {he} arrived, {his} {rel} was waiting at the door.",
                        "At last {he} reached {town}, and {his} {rel} gave {him} a big hug.",
                        "{His} {rel} was so {good} to see {him}."], c))
    s.append(fill(rng, ["They had {food} and {food2} for supper and talked until late.",
                        "They spent the evening telling stories by the fire.",
                        "The next day they walked by the water and watched the boats.",
                        "It was the best trip {name} had ever had."], c))
    return " ".join(s)


def story_skill(rng):
    who = make_person(rng)
    skill, doing = rng.choice(SKILLS)
    c = who.ctx()
    c.update(skill=skill, doing=doing, teacher=rng.choice(TEACHERS),
             days=rng.choice(["every day", "every evening", "each morning before school",
                              "all summer", "for weeks"]),
             good=rng.choice(FEELINGS_GOOD), bad=rng.choice(FEELINGS_BAD))
    s = [opening(rng, who)]
    s.append(fill(rng, ["More than anything, {name} wanted to learn to {skill}.",
                        "{name} dreamed of learning to {skill}.",
                        "All of {his} friends could {skill}, but {name} could not."], c))
    s.append(fill(rng, ["The first time {he} tried, it went badly.",
                        "{He} tried and tried, but it was much harder than it looked.",
                        "At first {he} made one mistake after another, and {he} felt {bad}."], c))
    s.append(fill(rng, ['"Don\'t give up," said {teacher}. "Practise a little {days}."',
                        "Then {teacher} offered to help {him}.",
                        '"Everyone starts somewhere," {teacher} told {him} kindly.'], c))
    s.append(fill(rng, ["So {name} practised {days}.",
                        "{He} kept {doing} {days}, even when it rained.",
                        "{name} did not give up. {He} practised {days}."], c))
    s.append(fill(rng, ["Slowly, {he} got better.", "Little by little, it became easier.",
                        "One day, everything came together."], c))
    s.append(fill(rng, ["Now {name} can {skill} very well, and {he} is {good}.",
                        "In the end {he} learned to {skill}, and {he} felt {good}.",
                        "Today {name} teaches other children to {skill}."], c))
    return " ".join(s)


def story_new_friend(rng):
    a = make_character(rng)
    b = make_character(rng, exclude=(a.name,))
    c = a.ctx()
    c.update(b.ctx("2"))
    c.update(a_desc2=an(b.desc), when=time_phrase(rng), game=rng.choice(
        ["hide and seek", "tag", "catch", "a game with sticks and stones",
         "a race to the big tree", "a guessing game"]), food=rng.choice(FOODS))
    s = [opening(rng, a)]
    s.append(fill(rng, ["{name} had no friends and often felt lonely.",
                        "{name} was shy and did not talk to many others.",
                        "{name} was new in the neighbourhood and knew nobody."], c))
    s.append(fill(rng, ["{when}, {he} met {a_desc2} called {name2}.",
                        "{when}, {a_desc2} named {name2} sat down next to {him}.",
                        "{when}, {name} saw {a_desc2} sitting alone. It was {name2}."], c))
    s.append(fill(rng, ['"Hello," said {name2}. "Would you like to play?"',
                        '"Hello, I am {name2}," said the newcomer. "What is your name?"',
                        "At first neither of them said a word."], c))
    s.append(fill(rng, ["They played {game} until the sun went down.",
                        "Soon they were laughing and playing {game}.",
                        "{name2} shared {his2} {food}, and {name} shared a story."], c))
    s.append(fill(rng, ["From that day on, {name} and {name2} were best friends.",
                        "After that, they met every day.",
                        "{name} was never lonely again."], c))
    return " ".join(s)


def story_weather(rng):
    who = make_person(rng)
    event, desc, damage = rng.choice(WEATHER_EVENTS)
    c = who.ctx()
    c.update(event=event, when=time_phrase(rng), damage=damage,
             neighbour=rng.choice(["an old neighbour", "the family next door", "the baker",
                                   "the farmer down the road", "a lady with a small dog"]),
             food=rng.choice(FOODS))
    s = [opening(rng, who)]
    s.append(fill(rng, ["{when}, there was {event}.", "{when}, {event} came to the town.",
                        "{when}, the radio said there would be {event}."], c))
    s.append(desc)
    s.append(fill(rng, ["{name} stayed inside and listened.",
                        "{name} watched from the window with a cup of tea.",
                        "{name} closed the shutters and lit a lamp."], c))
    s.append(fill(rng, ["In the morning, {damage}.", "When it was over, {damage}.",
                        "The next day everyone saw that {damage}."], c))
    s.append(fill(rng, ["{name} went to help {neighbour}.",
                        "{name} and {neighbour} worked together to clear up.",
                        "{name} knocked on the door of {neighbour} to check that all was well."],
                  c))
    s.append(fill(rng, ["Afterwards they shared some {food} and laughed about the night.",
                        "By evening the town was tidy again.",
                        "Everyone said it was a night they would not forget."], c))
    return " ".join(s)


def story_surprise(rng):
    who = make_character(rng)
    other = make_character(rng, exclude=(who.name,))
    c = who.ctx()
    c.update(other.ctx("2"))
    gift = rng.choice(GIFTS)
    c.update(gift=gift, a_gift=an(gift), when=time_phrase(rng), good=rng.choice(FEELINGS_GOOD),
             problem=rng.choice(["the dog knocked it over", "it fell in a puddle",
                                 "{name2} nearly walked in and saw it",
                                 "a cup of water spilled over it",
                                 "the wind blew it off the table"]))
    c["problem"] = c["problem"].format(**c)
    s = [opening(rng, who)]
    s.append(fill(rng, ["{when}, {name} remembered that it was {name2}'s birthday.",
                        "{name2}'s birthday was coming, and {name} wanted to do something special.",
                        "{when}, {name} decided to make a surprise for {name2}."], c))
    s.append(fill(rng, ["{He} decided to make {a_gift}.", "{He} chose to make {a_gift}.",
                        "After much thinking, {he} began to make {a_gift}."], c))
    s.append(fill(rng, ["But just when it was almost ready, {problem}.",
                        "Everything went well until {problem}.",
                        "There was one problem: {problem}."], c))
    s.append(fill(rng, ["So {he} started again, working quickly and carefully.",
                        "{name} did not give up and fixed it as well as {he} could.",
                        "{He} worked late into the night to make it right."], c))
    s.append(fill(rng, ['When {name2} saw the {gift}, {he2} said, "Thank you! This is wonderful!"',
                        "{name2} was so {good} that {he2} danced around the room.",
                        "{name2} smiled and said it was the best present ever."], c))
    return " ".join(s)


def story_wish(rng):
    """A small fable: an animal wishes to be different and learns its own worth."""
    desc, home, move = rng.choice(ANIMALS)
    wish, become, virtue = rng.choice(WISHES)
    name = rng.choice(PET_NAMES)
    who = Who(name, desc, rng.choice("fm"), animal=(home, move))
    c = who.ctx()
    c.update(wish=wish, become=become, virtue=virtue, move=move,
             other=rng.choice(["a wise old owl", "a kind old tortoise", "a clever crow",
                               "a grey wolf", "a gentle cow"]))
    s = [opening(rng, who)]
    s.append(fill(rng, ["{name} always wished {wish}.",
                        "Every night {name} looked at the stars and wished {wish}.",
                        "{name} was not happy, because {he} wanted {wish}."], c))
    c["Other"] = cap(c["other"])
    s.append(fill(rng, ['"Why do you want that?" asked {other}.',
                        '{Other} said, "You are fine just as you are."'], c))
    s.append(fill(rng, ["One day there was danger, and only someone {virtue} could help.",
                        "Then came a day when being {virtue} was exactly what was needed."], c))
    s.append(fill(rng, ["{name} {move} to help, and everyone was saved.",
                        "{name} was the only one who could do it, and {he} did."], c))
    s.append(fill(rng, ["After that, {name} never wished to be {become} again.",
                        "{He} learned that everyone is good at something.",
                        "The others thanked {him}, and {name} was proud of who {he} was."], c))
    return " ".join(s)


# Animal facts: (singular, plural, size, home, food, two or three more facts)
ANIMAL_FACTS = [
    ("cow", "cows", "large", "fields and barns", "grass and hay",
     ["Cows give milk.", "A cow has four stomachs.", "Cows like to stay together in a herd."]),
    ("horse", "horses", "large", "fields and stables", "grass, hay and oats",
     ["Horses can sleep standing up.", "A young horse is called a foal.",
      "Horses can run very fast."]),
    ("sheep", "sheep", "medium-sized", "fields and hills", "grass",
     ["Sheep grow thick wool.", "A young sheep is called a lamb.",
      "Farmers cut the wool once a year."]),
    ("dog", "dogs", "small or large", "houses with people", "meat and dog food",
     ["Dogs have a very good sense of smell.", "A young dog is called a puppy.",
      "Dogs wag their tails when they are happy."]),
    ("cat", "cats", "small", "houses, barns and streets", "meat and fish",
     ["Cats sleep for most of the day.", "Cats can see well in the dark.",
      "A young cat is called a kitten."]),
    ("fox", "foxes", "small", "woods, fields and even cities", "mice, birds, fruit and insects",
     ["Foxes have bushy tails.", "A fox hunts mostly at night.", "A young fox is called a cub."]),
    ("rabbit", "rabbits", "small", "burrows under the ground", "grass and leaves",
     ["Rabbits have long ears.", "Rabbits can jump high.", "A young rabbit is called a kit."]),
    ("bear", "bears", "very large", "forests and mountains", "berries, fish, roots and honey",
     ["Many bears sleep through the winter.", "Bears are strong swimmers.",
      "A young bear is called a cub."]),
    ("owl", "owls", "small to medium-sized", "trees and old barns", "mice and insects",
     ["Owls hunt at night.", "An owl can turn its head a long way round.",
      "Owls fly without making a sound."]),
    ("duck", "ducks", "small", "ponds, lakes and rivers", "plants, seeds and small animals",
     ["Ducks have waterproof feathers.", "Ducks have webbed feet for swimming.",
      "A young duck is called a duckling."]),
    ("frog", "frogs", "small", "ponds and wet places", "insects and worms",
     ["Frogs start life as tadpoles.", "Frogs can breathe through their skin.",
      "Frogs catch flies with their long tongues."]),
    ("elephant", "elephants", "huge", "grasslands and forests in warm countries",
     "grass, leaves and fruit",
     ["An elephant uses its trunk to drink and to pick things up.",
      "Elephants are the largest animals on land.", "Elephants live in family groups."]),
    ("lion", "lions", "large", "grasslands in Africa", "meat",
     ["Lions live in groups called prides.", "A lion's roar can be heard far away.",
      "Lions rest for much of the day."]),
    ("penguin", "penguins", "medium-sized", "cold seas and icy coasts", "fish and krill",
     ["Penguins cannot fly, but they swim very well.", "Penguins huddle together to keep warm.",
      "A penguin's feathers keep out the cold water."]),
    ("whale", "whales", "enormous", "the oceans", "fish and tiny sea creatures",
     ["Whales breathe air through a hole on top of their heads.",
      "Some whales sing long songs.", "The blue whale is the largest animal that has ever lived."]),
    ("bee", "bees", "tiny", "hives and nests", "nectar and pollen",
     ["Bees make honey.", "Bees help flowers make seeds.",
      "A bee dances to tell others where food is."]),
    ("ant", "ants", "tiny", "nests in the ground", "seeds, insects and sweet things",
     ["Ants can carry things much heavier than themselves.", "Ants live in large colonies.",
      "Ants follow scent trails to find food."]),
    ("squirrel", "squirrels", "small", "trees in parks and woods", "nuts and seeds",
     ["Squirrels bury nuts to eat in winter.", "Squirrels use their tails for balance.",
      "Squirrels can climb down trees head first."]),
    ("turtle", "turtles", "small to large", "rivers, lakes and seas", "plants and small animals",
     ["Turtles carry a hard shell on their backs.", "Some turtles live for a very long time.",
      "Sea turtles lay their eggs on sandy beaches."]),
    ("goat", "goats", "medium-sized", "farms and rocky hills", "grass, leaves and bark",
     ["Goats are very good climbers.", "Goats give milk that can be made into cheese.",
      "A young goat is called a kid."]),
    ("hen", "hens", "small", "farms and back yards", "grain, seeds and worms",
     ["Hens lay eggs.", "A young hen is called a chick.", "Hens like to scratch in the dirt."]),
    ("dolphin", "dolphins", "large", "the sea", "fish",
     ["Dolphins are very clever.", "Dolphins talk to each other with clicks and whistles.",
      "Dolphins swim in groups called pods."]),
    ("mouse", "mice", "tiny", "fields, barns and houses", "seeds and crumbs",
     ["Mice have long tails.", "Mice can squeeze through very small holes.",
      "Mice are most busy at night."]),
    ("camel", "camels", "large", "deserts", "dry plants and grass",
     ["Camels can go for days without drinking.", "A camel's hump stores fat, not water.",
      "Camels have long eyelashes to keep out the sand."]),
    ("butterfly", "butterflies", "small", "meadows and gardens", "nectar from flowers",
     ["A butterfly starts life as a caterpillar.", "Butterflies taste with their feet.",
      "Butterflies have four wings."]),
    ("snail", "snails", "tiny", "damp places under stones and leaves", "leaves",
     ["A snail carries its house on its back.", "Snails move very slowly.",
      "Snails leave a shiny trail behind them."]),
]

GENERAL_FACTS = [
    "The sun rises in the east and sets in the west.",
    "There are seven days in a week.", "There are twelve months in a year.",
    "A year has four seasons: spring, summer, autumn and winter.",
    "Water freezes when it is very cold and turns into ice.",
    "When water gets very hot, it boils and turns into steam.",
    "The moon goes around the earth about once a month.",
    "The earth goes around the sun once a year.",
    "Rain falls from clouds.", "A rainbow appears when the sun shines through rain.",
    "Fish breathe through gills.", "Birds have feathers and lay eggs.",
    "Most trees lose their leaves in autumn.", "The sea is salty, but rivers are not.",
    "People need to drink water every day.", "Sleep helps the body and mind to rest.",
    "Washing your hands keeps germs away.", "Milk can be made into butter and cheese.",
    "Bread is made from flour, water and yeast.", "Honey is made by bees.",
    "Ice floats on water.", "Sound travels more slowly than light.",
    "Thunder comes after lightning because light is faster than sound.",
    "The heart pumps blood around the body.",
    "We have five senses: sight, hearing, smell, taste and touch.",
    "A compass needle points north.", "The Pacific is the largest ocean on earth.",
    "Mountains are colder at the top than at the bottom.",
    "Deserts get very little rain.", "Snow is made of tiny ice crystals.",
    "An hour has sixty minutes, and a minute has sixty seconds.",
    "A day has twenty-four hours.", "Wood floats, but most stones sink.",
    "Metal gets hot quickly in the sun.", "Plants need light to grow.",
    "Stars are suns that are very far away.", "The wind is moving air.",
    "Clouds are made of tiny drops of water.", "Shadows are longest in the morning and evening.",
    "A triangle has three sides, and a square has four.",
    "Red, yellow and blue are called primary colours.",
    "Mixing blue and yellow paint makes green.", "Mixing red and white paint makes pink.",
    "Libraries lend books for free.", "Trains run on rails.",
    "A bicycle has two wheels.", "Ships float because they push water out of the way.",
    "A map shows where places are.", "A clock has an hour hand and a minute hand.",
    "Most people have ten fingers and ten toes.", "Teeth need brushing twice a day.",
    "Eggs hatch when they are kept warm.", "A caterpillar turns into a butterfly.",
    "Bats fly at night and find their way by sound.",
    "Paper is made from wood.", "Glass is made from sand.", "Rubber is stretchy.",
    "A magnet pulls iron towards it.", "Summer days are long, and winter days are short.",
]

JOBS = [("baker", "makes bread, cakes and buns early in the morning"),
        ("doctor", "helps people who are ill"), ("teacher", "helps children learn"),
        ("farmer", "grows food and looks after animals"),
        ("firefighter", "puts out fires and keeps people safe"),
        ("postman", "brings letters and parcels to every house"),
        ("pilot", "flies planes across the sky"), ("builder", "builds houses and walls"),
        ("cook", "makes meals in a kitchen"), ("fisherman", "catches fish at sea"),
        ("vet", "looks after sick animals"), ("librarian", "looks after the books in a library"),
        ("driver", "takes people from place to place in a bus"),
        ("painter", "paints pictures or the walls of houses"),
        ("dentist", "takes care of people's teeth"), ("tailor", "makes and mends clothes"),
        ("carpenter", "makes things out of wood"), ("nurse", "cares for people in hospital"),
        ("shopkeeper", "sells things in a shop"),
        ("scientist", "asks questions and does experiments"),
        ("sailor", "works on a ship"), ("musician", "plays music for people to enjoy"),
        ("police officer", "helps people and keeps the streets safe"),
        ("mechanic", "fixes cars and engines")]


def facts_animals(rng):
    sing, plur, size, home, food, extra = rng.choice(ANIMAL_FACTS)
    c = dict(sing=sing, plur=plur, Plur=cap(plur), size=size, home=home, food=food,
             a_sing=an(sing), A_sing=cap(an(sing)))
    s = [fill(rng, ["Here are some facts about {plur}.", "Let us learn about {plur}.",
                    "Do you know much about {plur}?", "{Plur} are interesting animals."], c)]
    s.append(fill(rng, ["{A_sing} is a {size} animal.", "{Plur} are {size} animals.",
                        "{A_sing} can be {size}."], c))
    s.append(fill(rng, ["{Plur} live in {home}.", "You can find {plur} in {home}.",
                        "Most {plur} make their homes in {home}."], c))
    s.append(fill(rng, ["They eat {food}.", "{Plur} feed on {food}.",
                        "{A_sing} likes to eat {food}."], c))
    s.extend(rng.sample(extra, rng.randint(1, len(extra))))
    return " ".join(s)


def facts_general(rng):
    intro = rng.choice(["Here are some things that are true.", "Did you know?",
                        "Some simple facts:", "Things everyone should know.",
                        "A few facts about the world.", ""])
    body = rng.sample(GENERAL_FACTS, rng.randint(3, 6))
    return (intro + " " if intro else "") + " ".join(body)


def facts_jobs(rng):
    chosen = rng.sample(JOBS, rng.randint(3, 5))
    s = [rng.choice(["People do many kinds of work.", "What do people do all day?",
                     "Every town needs people with different jobs.", "Here are some jobs."])]
    for job, does in chosen:
        s.append(rng.choice(["{A} {does}.", "{A} is someone who {does}.",
                             "The {job} {does}."]).format(A=cap(an(job)), job=job, does=does))
    s.append(rng.choice(["Which job would you like to do?", "All of these jobs are important.",
                         "When I grow up, I want to be " + an(rng.choice(chosen)[0]) + ".", ""]))
    return " ".join(x for x in s if x)


def facts_numbers(rng):
    s = []
    for _ in range(rng.randint(3, 5)):
        a, b = rng.randint(1, 10), rng.randint(1, 10)
        kind = rng.randrange(4)
        fruit = rng.choice(["apples", "eggs", "pears", "cups", "books", "shells", "stones"])
        if kind == 0:
            s.append(f"{cap(NUMBER_WORDS[a])} and {NUMBER_WORDS[b]} make {NUMBER_WORDS[a + b]}.")
        elif kind == 1 and a > b:
            s.append(f"If you have {NUMBER_WORDS[a]} {fruit} and give away {NUMBER_WORDS[b]}, "
                     f"you have {NUMBER_WORDS[a - b]} left.")
        elif kind == 2 and a * b <= 20:
            s.append(f"{cap(NUMBER_WORDS[a])} times {NUMBER_WORDS[b]} is {NUMBER_WORDS[a * b]}.")
        else:
            s.append(f"{cap(NUMBER_WORDS[a])} plus {NUMBER_WORDS[b]} equals {a + b}.")
    intro = rng.choice(["Let us count.", "Some sums:", "Maths practice.", ""])
    return " ".join([intro] + s if intro else s)


def facts_calendar(rng):
    m = rng.randrange(12)
    d = rng.randrange(7)
    season = ["winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer",
              "autumn", "autumn", "autumn", "winter"][m]
    s = [f"{MONTHS[m]} comes after {MONTHS[m - 1]} and before {MONTHS[(m + 1) % 12]}.",
         f"In many countries, {MONTHS[m]} is in {season}.",
         f"The day after {WEEKDAYS[d]} is {WEEKDAYS[(d + 1) % 7]}.",
         f"The day before {WEEKDAYS[d]} is {WEEKDAYS[d - 1]}."]
    rng.shuffle(s)
    extra = {"winter": "In winter it is cold, and some places get snow.",
             "spring": "In spring the days get longer and birds build nests.",
             "summer": "In summer the days are long and warm.",
             "autumn": "In autumn the leaves turn red and gold and fall from the trees."}
    return " ".join(s[:rng.randint(2, 4)]) + " " + extra[season]


DIALOGUE_SCENES = [
    # (opening question, answer, follow-up exchanges)
    ("shop", [
        ('"Good morning. Can I help you?" asked the shopkeeper.',
         '"Yes, please. I would like some {food}," said {name}.'),
        ('"How much would you like?"', '"Enough for {n} people, please."'),
        ('"That will be {price} pounds."', '"Here you are. Thank you very much!"'),
    ]),
    ("directions", [
        ('"Excuse me," said {name}. "How do I get to the {dest}?"',
         '"Go straight on, then turn {dir} at the {landmark}," said {name2}.'),
        ('"Is it far?"', '"No, it is only about {n} minutes on foot."'),
        ('"Thank you so much."', '"You are welcome. Have a nice day!"'),
    ]),
    ("weather", [
        ('"What is the weather like today?" asked {name}.',
         '"It is {weather}," said {name2}.'),
        ('"Should I take an umbrella?"', '"{umbrella}"'),
        ('"Then let us go to the {dest} later."', '"That sounds like a good plan."'),
    ]),
    ("picnic", [
        ('"Shall we have a picnic on {day}?" asked {name}.',
         '"What a good idea!" said {name2}. "Where shall we go?"'),
        ('"Let us go to the {dest}. There is a nice spot by the water."',
         '"I will bring {food} and a blanket."'),
        ('"And I will bring {food2} and something to drink."',
         '"I hope it does not rain."'),
    ]),
    ("pet", [
        ('"Have you seen my {animal}?" asked {name}. "{He} is called {pet}."',
         '"What does {pet} look like?" asked {name2}.'),
        ('"{He} is {color}, with a {color2} patch on {his} back."',
         '"I think I saw {him} near the {landmark} a minute ago."'),
        ('"Oh, thank you! I will go and look there."', '"Good luck. I hope you find {him}."'),
    ]),
    ("homework", [
        ('"Can you help me with my homework?" asked {name}.',
         '"Of course," said {name2}. "What is it about?"'),
        ('"We have to write about {topic}."', '"Start with what you already know about it."'),
        ('"That is a good idea. I know quite a lot, actually."',
         '"See? It is not so hard after all."'),
    ]),
    ("library", [
        ('"I am looking for a book about {topic}," said {name}.',
         '"They are on the second shelf, next to the window," said the librarian.'),
        ('"May I borrow two?"', '"Yes. Please bring them back in {n} weeks."'),
        ('"I will. Thank you!"', '"Enjoy your reading."'),
    ]),
]
DESTS = ["library", "station", "park", "museum", "market", "beach", "post office", "swimming pool",
         "zoo", "harbour", "bakery", "town hall"]
LANDMARKS = ["church", "big oak tree", "bus stop", "fountain", "bakery", "old mill", "bridge",
             "red post box", "school gate", "corner shop"]
WEATHERS = [("sunny and warm", '"No, you will not need it today."'),
            ("cloudy and cool", '"Maybe. It might rain later."'),
            ("raining hard", '"Yes, and wear your boots as well."'),
            ("windy but dry", '"No, the wind would only blow it inside out."'),
            ("cold and frosty", '"No, but take a warm coat and gloves."'),
            ("grey and drizzly", '"Yes, it is better to be safe."')]
TOPICS = ["volcanoes", "the sea", "space", "dinosaurs", "trains", "castles", "birds", "the weather",
          "ancient Egypt", "the human body", "bridges", "the moon", "insects", "pirates"]


def dialogue(rng):
    scene, turns = rng.choice(DIALOGUE_SCENES)
    a = make_person(rng)
    b = make_person(rng, exclude=(a.name,))
    weather, umbrella = rng.choice(WEATHERS)
    gender = rng.choice("fm")
    he, him, his = Who.PRONOUNS[gender]
    c = dict(a.ctx())
    c.update(b.ctx("2"))
    c.update(food=rng.choice(FOODS), food2=rng.choice(FOODS), n=rng.choice(NUMBER_WORDS[2:11]),
             price=rng.choice(NUMBER_WORDS[2:11]), dest=rng.choice(DESTS),
             dir=rng.choice(["left", "right"]), landmark=rng.choice(LANDMARKS), weather=weather,
             umbrella=umbrella.strip('"'), day=rng.choice(WEEKDAYS), topic=rng.choice(TOPICS),
             animal=rng.choice(["dog", "cat", "rabbit", "tortoise", "parrot"]),
             pet=rng.choice(PET_NAMES), color=rng.choice(COLORS), color2=rng.choice(COLORS),
             He=cap(he), him=him, his=his, he=he)
    lead = rng.choice(["", "", f"{a.name} met {b.name} on the way to the {c['dest']}.",
                       f"It was {c['day']} afternoon.", f"{a.name} and {b.name} were at home."])
    lines = [lead] if lead else []
    for q, ans in turns[:rng.randint(2, len(turns))]:
        lines.append(q.format(**c))
        lines.append(ans.format(**c))
    if rng.random() < 0.4:
        lines.append(rng.choice([f"Then {a.name} went home.", "They both smiled.",
                                 f"{b.name} waved goodbye.", "And that was that."]))
    return "\n".join(lines)


STEPS = {
    "make a cup of tea": ["Fill the kettle with water and switch it on.",
                          "Put a tea bag in a cup.", "Pour the hot water into the cup.",
                          "Wait for three minutes.", "Take out the tea bag.",
                          "Add milk if you like it.", "Let it cool a little before you drink."],
    "make a sandwich": ["Take two slices of bread.", "Spread butter on one side of each slice.",
                        "Put cheese and ham on one slice.", "Add a few slices of cucumber.",
                        "Put the other slice on top.", "Cut it in half and enjoy."],
    "wash a dog": ["Fill a tub with warm water.", "Gently lift the dog into the tub.",
                   "Wet the fur all over.", "Rub in some dog shampoo.",
                   "Rinse the soap out carefully.", "Dry the dog with a big towel.",
                   "Stand back when the dog shakes itself!"],
    "fold a paper boat": ["Take a sheet of paper.", "Fold it in half from top to bottom.",
                          "Fold the corners down to make a triangle.",
                          "Fold the bottom edges up on both sides.",
                          "Open the middle and flatten it into a square.",
                          "Pull the sides apart to open the boat."],
    "pack a school bag": ["Check your timetable for tomorrow.", "Put in the books you need.",
                          "Add your pencil case.", "Pack your lunch and a bottle of water.",
                          "Put your sports kit in if you need it.", "Hang the bag by the door."],
    "make pancakes": ["Put flour in a bowl.", "Crack in two eggs.", "Pour in the milk slowly.",
                      "Whisk until the batter is smooth.", "Heat a little butter in a pan.",
                      "Pour in some batter and cook until golden.",
                      "Flip it and cook the other side."],
    "clean your room": ["Open the window to let in fresh air.", "Put your clothes away.",
                        "Put the toys back in the box.", "Make the bed.",
                        "Dust the shelves.", "Sweep the floor."],
    "mend a bicycle tyre": ["Take the wheel off the bike.", "Pull out the inner tube.",
                            "Pump it up and listen for the hiss of air.",
                            "Mark the hole with chalk.", "Stick a patch over the hole.",
                            "Put the tube back and pump up the tyre."],
}
LIST_KINDS = [
    ("Things to take to the beach", ["a towel", "sun cream", "a hat", "a bucket and spade",
                                     "a bottle of water", "a book", "sandwiches", "a ball",
                                     "sunglasses", "a swimming costume"]),
    ("Shopping list", ["milk", "bread", "eggs", "butter", "apples", "rice", "soap", "tea",
                       "cheese", "oranges", "flour", "jam", "honey"]),
    ("Things to do on Saturday", ["tidy my room", "visit Grandma", "go swimming",
                                  "finish my book", "bake a cake", "walk the dog",
                                  "write a letter", "fix my bike", "play football"]),
    ("Things I like", ["warm socks", "the smell of rain", "long walks", "hot soup",
                       "funny stories", "snowy mornings", "the sound of the sea", "my cat",
                       "ice cream in summer", "drawing maps"]),
    ("Things to pack for a camping trip", ["a tent", "a sleeping bag", "a torch", "matches",
                                           "a warm jumper", "a map", "a pot for cooking",
                                           "a rope", "a first aid kit", "plenty of water"]),
]


def list_doc(rng):
    if rng.random() < 0.5:
        task = rng.choice(sorted(STEPS))
        steps = STEPS[task]
        lead = rng.choice([f"How to {task}.", f"Here is how to {task}.",
                           f"Do you want to {task}? Follow these steps.",
                           f"{rng.choice(GIRL_NAMES + BOY_NAMES)} showed me how to {task}."])
        body = [f"{i + 1}. {step}" for i, step in enumerate(steps)]
        return lead + "\n" + "\n".join(body)
    title, items = rng.choice(LIST_KINDS)
    chosen = rng.sample(items, rng.randint(4, min(7, len(items))))
    name = rng.choice(GIRL_NAMES + BOY_NAMES)
    if rng.random() < 0.5:
        return f"{title}:\n" + "\n".join("- " + x for x in chosen)
    return (rng.choice([f"{name} wrote a list. ", f"This is {name}'s list. ", ""]) +
            f"{title}: {join_list(chosen)}.")


def letter(rng):
    writer = make_person(rng)
    rel = rng.choice(["Grandma", "Grandpa", "Aunt Rosa", "Uncle Joe", "Mum", "Dad",
                      rng.choice(GIRL_NAMES + BOY_NAMES)])
    c = writer.ctx()
    c.update(rel=rel, food=rng.choice(FOODS), gift=rng.choice(GIFTS), town=rng.choice(TOWNS),
             day=rng.choice(WEEKDAYS), month=rng.choice(MONTHS), sight=rng.choice(SIGHTS),
             skill=rng.choice(SKILLS)[0], weather=rng.choice(WEATHERS)[0])
    body = [fill(rng, ["Thank you for the {gift}. I love it!", "I hope you are well.",
                       "How are you? We are all fine here."], c),
            fill(rng, ["Last {day} we went to {town} and saw {sight}.",
                       "This week I am learning to {skill}. It is hard but fun.",
                       "The weather here has been {weather} all week.",
                       "We had {food} for dinner, and it made me think of you."], c),
            fill(rng, ["Please come and visit us in {month}.", "I will write again soon.",
                       "I miss you very much.", "Say hello to everyone for me."], c)]
    sign = rng.choice(["Love", "With love", "Best wishes", "See you soon", "Your friend"])
    return f"Dear {rel},\n\n" + " ".join(body) + f"\n\n{sign},\n{writer.name}"


def diary(rng):
    day = rng.choice(WEEKDAYS)
    c = dict(day=day, food=rng.choice(FOODS), friend=rng.choice(GIRL_NAMES + BOY_NAMES),
             dest=rng.choice(DESTS), weather=rng.choice(WEATHERS)[0], topic=rng.choice(TOPICS),
             good=rng.choice(FEELINGS_GOOD), bad=rng.choice(FEELINGS_BAD),
             sight=rng.choice(SIGHTS), n=rng.choice(NUMBER_WORDS[2:10]))
    s = [fill(rng, ["Today was {day}.", "{day}.", "Dear diary, today was a busy {day}."], c),
         fill(rng, ["The weather was {weather}.", "When I woke up it was {weather}.",
                    "It was {weather} all day."], c),
         fill(rng, ["In the morning I went to the {dest} with {friend}.",
                    "After breakfast I walked to the {dest}.",
                    "{friend} came over and we played for {n} hours."], c),
         fill(rng, ["We saw {sight}.", "I read a book about {topic}.",
                    "We learned about {topic} at school.", "I had {food} for lunch."], c),
         fill(rng, ["I felt {good} all evening.", "I was a bit {bad} at bedtime.",
                    "Tomorrow I want to go to the {dest} again.",
                    "Now I am tired, so I am going to sleep."], c)]
    return " ".join(s)


GENERAL_KINDS = [
    (story_lost_item, 9), (story_journey, 8), (story_skill, 7), (story_new_friend, 7),
    (story_weather, 6), (story_surprise, 6), (story_wish, 4),
    (facts_animals, 7), (facts_general, 6), (facts_jobs, 4), (facts_numbers, 3),
    (facts_calendar, 3), (dialogue, 13), (list_doc, 8), (letter, 5), (diary, 7),
]


def general_docs(rng, target_bytes, seen):
    """Draws distinct documents until their UTF-8 size reaches target_bytes."""
    funcs = [f for f, _ in GENERAL_KINDS]
    weights = [w for _, w in GENERAL_KINDS]
    docs, size = [], 0
    while size < target_bytes:
        text = rng.choices(funcs, weights)[0](rng)
        if text in seen:
            continue
        seen.add(text)
        docs.append(text)
        size += len(text.encode())
    return docs


# ----------------------------------------------------------------------------------------------
# Garden care notes
# ----------------------------------------------------------------------------------------------

LIGHT = {
    "sun": ["full sun, {hours} hours a day.", "full sun; at least {hours} hours of direct light.",
            "full sun, {hours} or more hours of direct sun.",
            "a sunny, open spot with {hours} hours of sun."],
    "sun_pm_shade": ["full sun to light shade; shade it from hot afternoon sun.",
                     "morning sun and afternoon shade in hot summers.",
                     "sun for most of the day, with some shade in the afternoon.",
                     "full sun in cool areas, part shade where summers are hot."],
    "part": ["partial shade, three to four hours of morning sun.",
             "part shade; bright light but no harsh midday sun.",
             "dappled light or part shade.",
             "morning sun, then light shade for the rest of the day."],
    "bright": ["bright, indirect light near a window.", "bright light but no direct midday sun.",
               "a few feet from a sunny window, out of the direct rays.",
               "bright, filtered light; an east window is ideal."],
    "low": ["low to bright indirect light; it copes with dim corners.",
            "any indirect light, even a dim room.",
            "medium to low light; keep it out of hot direct sun.",
            "low light is fine, but it grows faster in bright, indirect light."],
    "sunny_window": ["bright light with some direct sun; a south window is ideal.",
                     "the sunniest window you have.",
                     "full sun indoors, at least four hours a day.",
                     "bright, direct light; it stretches and leans in shade."],
}
WATER = {
    "moist": ["keep the soil evenly moist; water when the top inch is dry.",
              "water regularly; the soil should stay moist but not soggy.",
              "steady moisture; water when the surface feels dry.",
              "about an inch of water a week; don't let it dry out."],
    "deep": ["water deeply once or twice a week, at the base of the plant.",
             "an inch or more a week, soaking the soil deeply.",
             "deep, regular watering; mulch to hold the moisture.",
             "a long soak at the roots every few days in hot weather."],
    "dry_between": ["water thoroughly, then let the top two inches dry out.",
                    "let the soil dry a little between waterings.",
                    "moderate; water when the top of the soil is dry to the touch.",
                    "water well, then wait until the soil is dry an inch down."],
    "drought": ["water sparingly; let the soil dry out completely between waterings.",
                "little water once established; it dislikes wet feet.",
                "drought-tolerant; water only in long dry spells.",
                "go easy; too much water does more harm than too little."],
    "pot_moist": ["water when the top inch of soil is dry; empty the saucer after.",
                  "keep lightly moist, never soggy.",
                  "water when the surface dries; never let the pot stand in water.",
                  "keep the mix just moist; it wilts when it is thirsty."],
    "pot_dry": ["water only when the soil is completely dry.",
                "a good soak every two to three weeks; less in winter.",
                "water deeply, then let the pot dry out all the way.",
                "sparingly; once a month is often enough in winter."],
    "soak": ["once a week; soak the pot and let it drain well.",
             "water when the roots turn silvery; never leave it standing in water.",
             "soak the bark for ten minutes each week, then drain.",
             "weekly in summer, every ten days in winter; drain well."],
}
SOIL = {
    "rich_loam": ["rich, well-drained loam.", "fertile loam with plenty of compost.",
                  "rich, crumbly soil; dig in compost before planting."],
    "average": ["average, well-drained soil.", "any well-drained garden soil.",
                "ordinary soil that drains well."],
    "lean": ["lean, sandy, fast-draining soil.",
             "poor to average soil with good drainage; add grit to clay.",
             "gritty, sandy soil; no rich compost."],
    "moist_rich": ["moist, rich soil with plenty of organic matter.",
                   "humus-rich soil that holds moisture.",
                   "rich soil; add leaf mould or compost to keep it moist."],
    "loose_deep": ["loose, deep, stone-free soil.", "light, sandy loam with no stones or clods.",
                   "deep, crumbly soil so the roots grow straight."],
    "acid": ["acidic soil, pH 4.5 to 5.5.",
             "moist, acidic soil rich in organic matter; add pine bark.",
             "acidic, free-draining soil; never add lime."],
    "firm_rich": ["firm, fertile soil with compost; add lime if it is acidic.",
                  "rich, firm soil; do not dig it just before planting.",
                  "well-fed, firm soil that holds moisture."],
    "cactus": ["cactus and succulent mix in a pot with a drainage hole.",
               "gritty, fast-draining mix; add perlite to potting soil.",
               "sandy mix in a clay pot."],
    "potting": ["ordinary potting mix with good drainage.",
                "peat-free potting mix in a pot with drainage holes.",
                "light, all-purpose potting mix."],
    "chunky": ["chunky, airy mix: potting soil with bark and perlite.",
               "a loose mix that drains quickly; add orchid bark to potting soil.",
               "well-aerated potting mix with plenty of bark."],
    "bark": ["orchid bark in a clear pot with holes.",
             "coarse bark mix; never regular potting soil.",
             "chunky orchid bark that lets the roots breathe."],
    "peaty": ["light, peat-based mix that holds moisture.", "a light, spongy potting mix.",
              "soft, moisture-holding mix with some perlite."],
    "citrus": ["well-drained citrus mix; add grit to potting soil.",
               "free-draining, slightly acidic mix in a large pot.",
               "gritty potting mix made for citrus."],
}
TEMP_FORMS = ["{lo} to {hi} F; {note}.", "best between {lo} and {hi} F; {note}.",
              "{word}, {lo} to {hi} F; {note}."]
TEMP_WORD = {"tender": "warm", "cool": "cool", "hardy": "mild to cool", "indoor": "indoors"}
TEMP_NOTES = {
    "tender": ["protect it from frost", "plant out after the last frost",
               "cover it if frost threatens", "growth stops below {min} F"],
    "cool": ["it takes a light frost", "hot weather makes it bolt",
             "grow it in spring and fall", "heat above {hi} F ends the harvest"],
    "hardy": ["hardy to {min} F", "it survives winter outdoors", "it needs a cold winter rest",
              "mulch the roots in very cold areas"],
    "indoor": ["keep it away from cold drafts", "no colder than {min} F",
               "avoid spots next to heaters", "normal room temperature suits it"],
}
CATEGORY_TIPS = {
    "herb": ["harvest in the morning, when the leaves are full of flavour.",
             "pick often; regular cutting keeps it bushy.",
             "grow a pot near the kitchen door so you use it more."],
    "veg": ["rotate crops each year to keep pests and diseases down.",
            "mulch around the plants to keep weeds down and moisture in.",
            "water in the morning so the leaves dry before night."],
    "fruit": ["feed in early spring with a balanced fertilizer.",
              "keep weeds away from the base; they steal water and food.",
              "pick fruit in the cool of the morning."],
    "flower": ["cut flowers early in the day and put them straight into water.",
               "feed lightly once a month while it is in bloom.",
               "remove faded flowers to keep new ones coming."],
    "house": ["wipe the leaves with a damp cloth to keep them dust-free.",
              "turn the pot now and then so it grows evenly.",
              "feed once a month in spring and summer, not in winter."],
}

# name, category, light, hours (for "sun"), water, soil, temperature class, lo, hi, min, tips
PLANTS = [
    ("Basil", "herb", "sun", "six", "moist", "rich_loam", "tender", 70, 90, 50,
     ["pinch the flower buds to keep the leaves coming.",
      "pick from the top, just above a pair of leaves, to make it bushy.",
      "plant it next to tomatoes; both like the same warm, sunny spot."]),
    ("Parsley", "herb", "sun_pm_shade", "six", "moist", "rich_loam", "cool", 50, 75, 20,
     ["soak the seeds overnight; they are slow to sprout.",
      "cut the outer stems first and let the centre keep growing.",
      "it flowers in its second year; sow fresh seed each spring."]),
    ("Cilantro", "herb", "sun_pm_shade", "six", "moist", "average", "cool", 50, 75, 25,
     ["sow a few seeds every three weeks for a steady supply.",
      "it bolts in hot weather; grow it in spring and fall.",
      "let a few plants go to seed and harvest the coriander."]),
    ("Mint", "herb", "part", "six", "moist", "moist_rich", "hardy", 55, 80, -20,
     ["grow it in a pot; its roots spread and take over a bed.",
      "cut it back hard in midsummer for a fresh flush of leaves.",
      "sink the pot into the ground to keep the runners in check."]),
    ("Rosemary", "herb", "sun", "eight", "drought", "lean", "hardy", 55, 85, 20,
     ["don't overwater; wet roots kill it faster than drought.",
      "bring pots indoors to a cool, bright window in cold winters.",
      "prune after flowering, but never cut into old, bare wood."]),
    ("Thyme", "herb", "sun", "six", "drought", "lean", "hardy", 55, 85, -10,
     ["trim after flowering to keep it compact.",
      "it grows well between paving stones and along path edges.",
      "replace plants every few years when they turn woody."]),
    ("Sage", "herb", "sun", "six", "dry_between", "average", "hardy", 55, 85, 0,
     ["cut stems back by a third in spring to keep it from sprawling.",
      "the leaves taste strongest just before the plant flowers.",
      "good drainage matters more than feeding."]),
    ("Oregano", "herb", "sun", "six", "dry_between", "lean", "hardy", 55, 85, -10,
     ["the flavour is strongest in lean soil; skip the fertilizer.",
      "cut stems just before the flowers open for drying.",
      "divide clumps every three years in spring."]),
    ("Chives", "herb", "sun_pm_shade", "six", "moist", "rich_loam", "hardy", 50, 80, -30,
     ["cut the leaves to two inches above the soil; they regrow fast.",
      "the purple flowers are edible; toss them into salads.",
      "divide crowded clumps every three years."]),
    ("Dill", "herb", "sun", "six", "moist", "average", "cool", 60, 75, 30,
     ["sow it where it will grow; it dislikes being moved.",
      "stake tall plants in windy spots.",
      "caterpillars love it; plant a little extra to share."]),
    ("Lavender", "herb", "sun", "eight", "drought", "lean", "hardy", 60, 90, 0,
     ["give it plenty of air; humidity and crowding cause rot.",
      "shear it by a third after flowering so it does not go woody.",
      "cut stems when the first flowers open for the best scent."]),
    ("Lemon Balm", "herb", "part", "six", "moist", "average", "hardy", 55, 80, -20,
     ["cut off the flowers to stop it seeding everywhere.",
      "rub a leaf; a strong lemon smell means it is ready to pick.",
      "cut it back after flowering for a second crop of leaves."]),
    ("Tomato", "veg", "sun", "eight", "deep", "rich_loam", "tender", 65, 85, 50,
     ["stake or cage the plants when you set them out.",
      "bury the stem deep; it grows roots all along the buried part.",
      "pinch out the side shoots between the main stem and the branches.",
      "water the soil, not the leaves, to keep blight away.",
      "uneven watering splits the fruit; keep it steady."]),
    ("Pepper", "veg", "sun", "eight", "moist", "rich_loam", "tender", 70, 85, 55,
     ["wait until the soil is warm before planting out.",
      "pick the first fruits early so the plant sets more.",
      "a stake keeps heavy branches from snapping."]),
    ("Cucumber", "veg", "sun", "eight", "moist", "rich_loam", "tender", 65, 90, 50,
     ["grow it up a trellis to save space and keep the fruit clean.",
      "pick often; fruit left too long stops the plant.",
      "bitter fruit usually means the plant went thirsty."]),
    ("Zucchini", "veg", "sun", "eight", "deep", "rich_loam", "tender", 65, 90, 50,
     ["pick them at six to eight inches long; they grow huge overnight.",
      "one or two plants are plenty for a family.",
      "if small fruits shrivel, hand-pollinate with a soft brush."]),
    ("Lettuce", "veg", "sun_pm_shade", "six", "moist", "rich_loam", "cool", 45, 75, 28,
     ["sow a short row every two weeks.",
      "pick the outer leaves and let the centre keep growing.",
      "shade cloth in summer slows bolting."]),
    ("Spinach", "veg", "sun_pm_shade", "six", "moist", "rich_loam", "cool", 40, 75, 20,
     ["sow in early spring or late summer; heat makes it bolt.",
      "harvest the big outer leaves first.",
      "a fall sowing often survives winter under a mulch."]),
    ("Kale", "veg", "sun_pm_shade", "six", "moist", "firm_rich", "cool", 40, 75, 10,
     ["the leaves taste sweeter after a frost.",
      "pick from the bottom up and leave the top rosette.",
      "check under the leaves for green caterpillars."]),
    ("Carrot", "veg", "sun", "six", "moist", "loose_deep", "cool", 55, 75, 25,
     ["thin the seedlings to two inches apart.",
      "keep the seedbed moist until they sprout, which can take two weeks.",
      "stony or heavy soil makes forked roots."]),
    ("Radish", "veg", "sun", "six", "moist", "loose_deep", "cool", 45, 75, 25,
     ["they are ready in about four weeks.",
      "pull them promptly; left too long they turn woody and hot.",
      "sow them between slower crops as a row marker."]),
    ("Beet", "veg", "sun", "six", "moist", "loose_deep", "cool", 50, 75, 25,
     ["each seed is a cluster; thin to one seedling per spot.",
      "the young leaves are good in salads.",
      "pull the roots at golf-ball size for the sweetest taste."]),
    ("Green Bean", "veg", "sun", "eight", "moist", "average", "tender", 65, 85, 50,
     ["pick every few days to keep the pods coming.",
      "don't work among wet plants; it spreads disease.",
      "sow after the soil warms; seeds rot in cold ground."]),
    ("Pea", "veg", "sun", "six", "moist", "average", "cool", 45, 70, 28,
     ["give them netting or twigs to climb.",
      "sow as soon as the soil can be worked in spring.",
      "pick the pods young; the more you pick, the more you get."]),
    ("Onion", "veg", "sun", "eight", "dry_between", "loose_deep", "hardy", 55, 80, 20,
     ["stop watering when the tops start to fall over.",
      "keep the weeds down; onions hate competition.",
      "dry the bulbs in an airy place for two weeks before storing."]),
    ("Garlic", "veg", "sun", "six", "dry_between", "rich_loam", "hardy", 45, 80, -10,
     ["plant the cloves in fall, pointed end up, two inches deep.",
      "cut off the curly flower stalks so the bulbs grow bigger.",
      "lift the bulbs when the lower leaves turn brown."]),
    ("Potato", "veg", "sun", "six", "deep", "acid", "tender", 60, 75, 32,
     ["hill soil up around the stems as they grow.",
      "keep the tubers covered; light turns them green and bitter.",
      "dig new potatoes when the plants flower."]),
    ("Pumpkin", "veg", "sun", "eight", "deep", "rich_loam", "tender", 65, 90, 50,
     ["give each vine plenty of room to sprawl.",
      "set ripening fruit on a board to stop rot.",
      "leave a few inches of stem when you cut the fruit."]),
    ("Eggplant", "veg", "sun", "eight", "moist", "rich_loam", "tender", 70, 90, 55,
     ["cover young plants to keep flea beetles off.",
      "pick the fruit while the skin is still glossy.",
      "it needs warm soil; use black plastic mulch in cool areas."]),
    ("Broccoli", "veg", "sun", "six", "moist", "firm_rich", "cool", 45, 75, 28,
     ["cut the main head while the buds are still tight.",
      "side shoots keep coming for weeks after the main cut.",
      "net young plants against cabbage butterflies."]),
    ("Cabbage", "veg", "sun", "six", "moist", "firm_rich", "cool", 45, 75, 20,
     ["firm the soil well around new transplants.",
      "heads split after heavy rain; harvest them when firm.",
      "rotate with other crops to keep clubroot away."]),
    ("Sweet Corn", "veg", "sun", "eight", "deep", "rich_loam", "tender", 65, 90, 50,
     ["plant in blocks, not single rows, for good pollination.",
      "harvest when the silks turn brown and the juice is milky.",
      "pick just before eating; the sugar turns to starch fast."]),
    ("Strawberry", "fruit", "sun", "eight", "moist", "rich_loam", "hardy", 60, 80, -10,
     ["pinch off the runners to get bigger berries.",
      "mulch with straw to keep the fruit clean.",
      "replace the plants every three or four years."]),
    ("Blueberry", "fruit", "sun", "six", "moist", "acid", "hardy", 60, 85, -20,
     ["plant two varieties for bigger crops.",
      "mulch with pine needles to keep the soil acidic.",
      "net the bushes before the fruit ripens, or birds take it all."]),
    ("Raspberry", "fruit", "sun", "six", "moist", "rich_loam", "hardy", 60, 80, -20,
     ["cut fruited canes to the ground after harvest.",
      "tie the canes to a wire to keep them upright.",
      "keep the rows narrow so air moves through."]),
    ("Lemon", "fruit", "sun", "eight", "dry_between", "citrus", "tender", 55, 85, 45,
     ["bring pots indoors when nights drop below 50 F.",
      "feed with citrus fertilizer in spring and summer.",
      "yellow leaves often mean too much water."]),
    ("Fig", "fruit", "sun", "eight", "deep", "average", "hardy", 60, 95, 15,
     ["the fruit is ripe when it droops and feels soft.",
      "a pot that limits the roots gives more fruit.",
      "wrap young trees in cold winters."]),
    ("Grape", "fruit", "sun", "eight", "dry_between", "average", "hardy", 60, 90, -10,
     ["prune hard in late winter while the vine is dormant.",
      "thin the leaves around the bunches so the sun reaches the fruit.",
      "taste before picking; grapes do not ripen off the vine."]),
    ("Rose", "flower", "sun", "six", "deep", "rich_loam", "hardy", 60, 85, -10,
     ["water at the base in the morning to keep black spot away.",
      "deadhead faded blooms to keep the flowers coming.",
      "prune in late winter, just as the buds swell."]),
    ("Sunflower", "flower", "sun", "eight", "dry_between", "average", "tender", 65, 90, 50,
     ["sow the seeds directly where they will grow.",
      "stake tall kinds before they get top-heavy.",
      "cover ripening heads with a paper bag to keep birds off."]),
    ("Marigold", "flower", "sun", "six", "dry_between", "average", "tender", 65, 90, 50,
     ["deadhead often for nonstop colour.",
      "plant them among vegetables; they help keep some pests away.",
      "don't overfeed; rich soil gives leaves, not flowers."]),
    ("Zinnia", "flower", "sun", "eight", "dry_between", "average", "tender", 65, 90, 50,
     ["the more you cut, the more they bloom.",
      "water the soil, not the leaves, to prevent powdery mildew.",
      "space the plants well so air can move."]),
    ("Petunia", "flower", "sun", "six", "moist", "average", "tender", 60, 85, 45,
     ["pinch back leggy stems in midsummer.",
      "feed pots every two weeks.",
      "deadhead to keep them blooming until fall."]),
    ("Geranium", "flower", "sun", "six", "dry_between", "average", "tender", 60, 80, 45,
     ["snap off faded flower heads at the base of the stalk.",
      "overwinter cuttings on a sunny windowsill.",
      "too much water rots the stems; let the soil dry a little."]),
    ("Hydrangea", "flower", "sun_pm_shade", "six", "deep", "moist_rich", "hardy", 55, 80, -10,
     ["some kinds flower blue in acidic soil and pink in alkaline soil.",
      "prune right after flowering; many bloom on old wood.",
      "wilting at midday often recovers by evening."]),
    ("Tulip", "flower", "sun", "six", "dry_between", "lean", "hardy", 50, 70, -30,
     ["plant the bulbs in fall, three times as deep as they are tall.",
      "let the leaves die back to feed next year's bulb.",
      "squirrels dig them up; cover new plantings with wire."]),
    ("Daffodil", "flower", "sun_pm_shade", "six", "dry_between", "average", "hardy", 50, 70,
     -30, ["plant in fall with the pointed end up.",
           "don't cut or tie the leaves until they turn yellow.",
           "divide crowded clumps when flowering drops off."]),
    ("Dahlia", "flower", "sun", "eight", "deep", "rich_loam", "tender", 60, 85, 32,
     ["dig the tubers after the first frost and store them dry.",
      "pinch the centre shoot for bushier plants.",
      "stake tall kinds at planting time."]),
    ("Peony", "flower", "sun", "six", "dry_between", "rich_loam", "hardy", 50, 80, -30,
     ["plant the eyes no more than two inches deep, or it won't flower.",
      "ants on the buds are harmless.",
      "it dislikes being moved; choose the spot carefully."]),
    ("Nasturtium", "flower", "sun", "six", "dry_between", "lean", "tender", 55, 85, 35,
     ["poor soil gives more flowers; skip the fertilizer.",
      "the leaves and flowers are edible, with a peppery taste.",
      "sow seeds directly; they dislike transplanting."]),
    ("Sweet Pea", "flower", "sun", "six", "moist", "rich_loam", "cool", 50, 70, 25,
     ["soak the seeds overnight before sowing.",
      "pick the flowers daily to keep them coming.",
      "give them a tall support to climb."]),
    ("Cosmos", "flower", "sun", "six", "drought", "lean", "tender", 60, 90, 45,
     ["poor soil makes more flowers.",
      "deadhead for a longer season.",
      "it self-sows; look for seedlings next spring."]),
    ("Snake Plant", "house", "low", "six", "pot_dry", "cactus", "indoor", 60, 85, 50,
     ["water about once a month in winter.",
      "overwatering is the main way to kill it.",
      "it grows slowly; repot only when the roots crack the pot."]),
    ("Pothos", "house", "low", "six", "pot_moist", "potting", "indoor", 60, 85, 50,
     ["trim long vines to make it bushier.",
      "cuttings root easily in a glass of water.",
      "pale leaves mean it needs more light."]),
    ("Peace Lily", "house", "low", "six", "pot_moist", "peaty", "indoor", 65, 85, 55,
     ["it droops when thirsty and perks up soon after watering.",
      "brown leaf tips often come from tap water; try rainwater.",
      "move it to brighter light if it stops flowering."]),
    ("Spider Plant", "house", "bright", "six", "pot_moist", "potting", "indoor", 60, 80, 45,
     ["pot up the baby plants that hang from the stems.",
      "brown tips come from salts in tap water.",
      "repot when the roots push out of the pot."]),
    ("Monstera", "house", "bright", "six", "dry_between", "chunky", "indoor", 65, 85, 55,
     ["give it a moss pole to climb.",
      "the split leaves appear as the plant matures in good light.",
      "wipe the big leaves with a damp cloth."]),
    ("Fiddle Leaf Fig", "house", "bright", "six", "dry_between", "potting", "indoor", 65, 85,
     55, ["don't move it often; it drops leaves when disturbed.",
          "turn the pot a quarter turn each week for even growth.",
          "keep it away from drafts and heaters."]),
    ("Aloe Vera", "house", "sunny_window", "six", "pot_dry", "cactus", "indoor", 60, 85, 40,
     ["use a clay pot with a drainage hole.",
      "water less in winter, about once a month.",
      "the pups at the base can be potted up on their own."]),
    ("Jade Plant", "house", "sunny_window", "six", "pot_dry", "cactus", "indoor", 60, 85, 45,
     ["let the soil dry completely before watering.",
      "soft, wrinkled leaves mean it is thirsty.",
      "it can live for decades; repot every few years."]),
    ("Orchid", "house", "bright", "six", "soak", "bark", "indoor", 65, 80, 55,
     ["cut the flower spike above a node to get a second bloom.",
      "silvery roots mean it needs water; green roots mean it is fine.",
      "a cooler night in fall helps it set new flower spikes."]),
    ("African Violet", "house", "bright", "six", "pot_moist", "peaty", "indoor", 65, 80, 60,
     ["water from below; cold water spots the leaves.",
      "keep it slightly pot-bound; it flowers better.",
      "remove spent flowers and damaged leaves."]),
    ("Boston Fern", "house", "bright", "six", "pot_moist", "peaty", "indoor", 60, 75, 50,
     ["stand it on a tray of wet pebbles for humidity.",
      "yellowing fronds mean the air is too dry.",
      "cut old brown fronds off at the base."]),
    ("ZZ Plant", "house", "low", "six", "pot_dry", "potting", "indoor", 60, 85, 45,
     ["it stores water in its roots and can go weeks without a drink.",
      "yellow stems usually mean too much water.",
      "it grows slowly; repot only every few years."]),
]
# Whole plants kept out of training so validation also measures the style on unseen names.
HELD_OUT = {"Cilantro", "Oregano", "Zucchini", "Radish", "Blueberry", "Marigold", "Geranium",
            "Peace Lily"}


def garden_note(rng, plant):
    (name, category, light, hours, water, soil, tclass, lo, hi, tmin, tips) = plant
    tip_pool = tips if rng.random() < 0.8 else CATEGORY_TIPS[category]
    temp = rng.choice(TEMP_FORMS).format(
        lo=lo, hi=hi, word=TEMP_WORD[tclass],
        note=rng.choice(TEMP_NOTES[tclass]).format(min=tmin, hi=hi))
    return (f"Plant: {name}\n"
            f"Light: {rng.choice(LIGHT[light]).format(hours=hours)}\n"
            f"Water: {rng.choice(WATER[water])}\n"
            f"Soil: {rng.choice(SOIL[soil])}\n"
            f"Temperature: {temp}\n"
            f"Tip: {rng.choice(tip_pool)}\n")


def garden_docs(rng):
    train_plants = [p for p in PLANTS if p[0] not in HELD_OUT]
    held_plants = [p for p in PLANTS if p[0] in HELD_OUT]
    train, seen = [], set()
    while len(train) < GARDEN_TRAIN_DOCS:
        # Cycle through the plants so each gets an even share of notes.
        text = garden_note(rng, train_plants[len(train) % len(train_plants)])
        if text not in seen:
            seen.add(text)
            train.append(text)
    val = []
    while len(val) < GARDEN_VAL_DOCS:
        if len(val) < GARDEN_VAL_SEEN_DOCS:
            plant = rng.choice(train_plants)
        else:
            plant = held_plants[len(val) % len(held_plants)]
        text = garden_note(rng, plant)
        if text not in seen:
            seen.add(text)
            val.append(text)
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def write_jsonl(path, docs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def train_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def model_config(eos_id, vocab_size):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": MAX_LEN,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "use_cache": True,
    }


GARDEN_README = """\
# Garden care notes (quickstart fine-tuning data)

A small domain dataset for `recipes/quickstart.yaml`. Every document is one care note in the
same fixed house style: six `Field: value` lines, always in this order, each value starting in
lower case and ending with a full stop. For example:

```
Plant: Tomato
Light: full sun, eight hours a day.
Water: deep, regular watering; mulch to hold the moisture.
Soil: rich, crumbly soil; dig in compost before planting.
Temperature: 65 to 85 F; plant out after the last frost.
Tip: bury the stem deep; it grows roots all along the buried part.
```

- `train.jsonl`: {train_docs} notes on {train_plants} plants (herbs, vegetables, fruit,
  flowers, house plants), about {per_plant} per plant.
- `val.jsonl`: {val_docs} notes: {val_held} on the {held_count} plants that never appear in
  training, and {val_seen} on training plants, each note a combination of phrasings that does
  not occur in `train.jsonl`. The held-out plants:
  {held}.

Each `{{"text": ...}}` line holds one note. Each plant has fixed attributes (light level, water
need, soil type, temperature range and hardiness, and a few plant-specific tips); a note picks
one of several phrasings for each field, and one of the plant's tips (sometimes a general tip for
its kind of plant). The style is far from the general English in `data/pretrain`, so fine-tuning
on it visibly lowers the held-out loss, and after fine-tuning the prompt
`"Plant: Tomato\\nLight:"` continues in the house style.

The attributes are plausible general gardening guidance written for this project, not advice for
any particular climate. The files are generated, deterministically, by
`scripts/make_quickstart_assets.py` (Python standard library, fixed seed); edit that script and
rerun it rather than editing the files.
"""

MODEL_README = """\
# quickstart-base

The architecture and tokenizer of the quickstart's tiny base model: a Llama-architecture model
(4 layers, hidden size 128, 4 query heads sharing 2 key/value heads of dimension 32, SwiGLU MLP
of width 352, tied embeddings; {params:,} parameters) with a {vocab}-token byte-level BPE tokenizer.
`<|endoftext|>` (id {eos}) is the end-of-text token; there is no BOS token.

This directory has no weights. `scripts/quickstart` pre-trains them from random initialization
with `recipes/quickstart-base.yaml` on the general-English corpus in `data/pretrain`, and caches
the resulting model under `.cache/quickstart-base/`; `recipes/quickstart.yaml` then fine-tunes
that model on `data/quickstart`.

`config.json`, `tokenizer.json` and `tokenizer_config.json` are standard Hugging Face files. They
are generated, together with both corpora (the tokenizer is trained on their union), by
`scripts/make_quickstart_assets.py`; rerun it rather than editing them.
"""


def count_params(cfg):
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d, nq, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    per_layer = h * d * (2 * nq + 2 * nkv) + 3 * h * i + 2 * h
    return v * h + cfg["num_hidden_layers"] * per_layer + h


def verify(model_dir, cfg, docs):
    """Loads the directory with transformers the way a user would, and checks it matches."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    config = LlamaConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert n == count_params(cfg), (n, count_params(cfg))
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.eos_token == EOS and tok.eos_token_id == cfg["eos_token_id"]
    assert len(tok) == cfg["vocab_size"], len(tok)
    for d in docs:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == d, d
    ids = tok(RECOMMENDED_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], cfg["vocab_size"])
    print(f"verify: transformers LlamaForCausalLM built, {n:,} parameters; "
          f"{type(tok).__name__} loads; {len(docs)} docs round-trip")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="repository root to write into (default: this checkout)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the transformers load check")
    args = ap.parse_args()

    rng = random.Random(SEED)
    seen = set()
    pre_train = general_docs(rng, PRETRAIN_TRAIN_BYTES, seen)
    pre_val = general_docs(rng, PRETRAIN_VAL_BYTES, seen)
    garden_train, garden_val = garden_docs(random.Random(SEED + 1))
    for d in pre_train + pre_val:
        assert "Plant:" not in d and "Light:" not in d

    root = args.root
    write_jsonl(os.path.join(root, "data/pretrain/train.jsonl"), pre_train)
    write_jsonl(os.path.join(root, "data/pretrain/val.jsonl"), pre_val)
    write_jsonl(os.path.join(root, "data/quickstart/train.jsonl"), garden_train)
    write_jsonl(os.path.join(root, "data/quickstart/val.jsonl"), garden_val)
    n_train_plants = len(PLANTS) - len(HELD_OUT)
    write_text(os.path.join(root, "data/quickstart/README.md"), GARDEN_README.format(
        train_docs=len(garden_train), train_plants=n_train_plants,
        per_plant=round(len(garden_train) / n_train_plants), val_docs=len(garden_val),
        val_held=len(garden_val) - GARDEN_VAL_SEEN_DOCS, held_count=len(HELD_OUT),
        held=", ".join(sorted(HELD_OUT)), val_seen=GARDEN_VAL_SEEN_DOCS))

    tok = train_tokenizer(pre_train + garden_train + pre_val + garden_val)
    eos_id = tok.token_to_id(EOS)
    model_dir = os.path.join(root, "configs/models/quickstart-base")
    os.makedirs(model_dir, exist_ok=True)
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    write_json(os.path.join(model_dir, "tokenizer_config.json"), {
        "eos_token": EOS, "bos_token": None, "model_max_length": MAX_LEN,
        "tokenizer_class": "PreTrainedTokenizerFast"})
    cfg = model_config(eos_id, tok.get_vocab_size())
    write_json(os.path.join(model_dir, "config.json"), cfg)
    write_text(os.path.join(model_dir, "README.md"), MODEL_README.format(
        params=count_params(cfg), vocab=cfg["vocab_size"], eos=eos_id))

    print(f"{'corpus':<26}{'docs':>7}{'bytes':>11}{'tokens':>10}{'bytes/token':>13}")
    for label, docs in [("data/pretrain/train", pre_train), ("data/pretrain/val", pre_val),
                        ("data/quickstart/train", garden_train),
                        ("data/quickstart/val", garden_val)]:
        nbytes = sum(len(d.encode()) for d in docs)
        ntok = sum(len(e.ids) for e in tok.encode_batch(docs))
        print(f"{label:<26}{len(docs):>7}{nbytes:>11,}{ntok:>10,}{nbytes / ntok:>13.2f}")
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {EOS} = {eos_id}; "
          f"model: {count_params(cfg):,} parameters")
    prompt_ids = tok.encode(RECOMMENDED_PROMPT).ids
    print(f"prompt {RECOMMENDED_PROMPT!r} -> {len(prompt_ids)} tokens")

    if not args.no_verify:
        verify(model_dir, cfg, pre_val[:50] + garden_val[:50])


if __name__ == "__main__":
    sys.exit(main())
